"""Logits of the same tokens from both sides of a conversion: a single-process megatron model and
a Hugging Face folder through transformers (the checks of import-hf and export-hf compare them)."""
from __future__ import annotations

from pathlib import Path

import torch


def megatron_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits [b, s, vocab] of a single-process megatron GPTModel (padding rows dropped)."""
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        logits = model(tokens, positions, attention_mask=None)
    return logits[..., :vocab_size].float()


def hf_logits(folder: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the HF checkpoint in ``folder``, computed by transformers in fp32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits.float()
