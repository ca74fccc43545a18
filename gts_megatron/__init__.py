"""gts_megatron: Group-then-Scale multilingual mixture-of-experts on Megatron-Core."""

__version__ = "0.1.0"
