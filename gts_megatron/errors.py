"""The one exception type users see: a one-line message, never a traceback."""


class GtsError(Exception):
    """A problem with the user's input or environment, reported as one line with exit code 2.

    The message names the file, field or value at fault and what would be valid.
    """


class Interrupted(Exception):
    """A long command stopped by SIGTERM/SIGINT after saving its progress: exit 128 + signal, and
    running the same command again resumes."""

    def __init__(self, signum: int, where: str):
        super().__init__(f"stopped by signal {signum} during {where}; run the same command again to resume")
        self.signum = signum


class WorkersFailed(Exception):
    """Launched worker processes failed and their errors were already printed (one line each):
    the command exits with their code and says nothing more."""

    def __init__(self, code: int):
        super().__init__(f"workers failed with exit code {code}")
        self.code = code
