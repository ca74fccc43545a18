"""`gts bench`: measured figures, each against a baseline taken in the same run."""
