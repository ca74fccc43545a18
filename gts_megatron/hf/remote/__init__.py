"""The code `gts export-hf` ships next to a GtS model's weights, loaded by transformers with
``trust_remote_code=True`` (so it imports only transformers and torch, never gts_megatron)."""
