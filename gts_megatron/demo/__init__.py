"""`gts demo`: the whole pipeline on the embedded corpus, ending in a report (see ``pipeline``)."""
from gts_megatron.demo.pipeline import DEFAULT, FULL, QUICK, run_demo

__all__ = ["DEFAULT", "FULL", "QUICK", "run_demo"]
