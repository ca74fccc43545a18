"""`gts bench`: measured figures, each against a baseline taken in the same run."""
from __future__ import annotations

import platform

from gts_megatron.data.prepare import available_cores


def machine() -> dict:
    """Where a figure was measured: usable cores and architecture (recorded with every result)."""
    return {"cores": available_cores(), "machine": platform.machine()}


def quiet(*_args) -> None:
    """A ``log`` that drops the stages' messages: a benchmark prints its own lines."""
