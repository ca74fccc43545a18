"""`gts demo`: the packaged demo recipe, its mechanism check and its report."""
from gts_megatron.demo.pipeline import RECIPES, run_demo

__all__ = ["RECIPES", "run_demo"]
