"""The one exception type users see: a one-line message, never a traceback."""


class GtsError(Exception):
    """A problem with the user's input or environment, reported as one line with exit code 2.

    The message names the file, field or value at fault and what would be valid.
    """
