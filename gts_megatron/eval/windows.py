"""Held-out text as sliding windows: each language's documents joined into one token stream,
cut into windows of ``window`` tokens that start every ``stride`` tokens. Each target token is
scored exactly once, in the first window that reaches it, so with a stride shorter than the window
every scored token but the first window's has at least ``window - stride`` tokens of context."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gts_megatron.data.manifest import Manifest, dataset_prefix
from gts_megatron.errors import GtsError


def heldout_tokens(data_dir: Path, manifest: Manifest, language: str, split: str,
                   max_tokens: Optional[int] = None) -> np.ndarray:
    """The documents of ``language``'s ``split``, joined (each ends with the EOD token), capped at
    ``max_tokens``; refused when there are fewer than 2 tokens (nothing to predict)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = dataset_prefix(data_dir, language, split)
    if manifest.tokens(language, split) < 2:  # an empty split has no readable index to open
        raise GtsError(f"{prefix}: language {language} has {manifest.tokens(language, split)} {split} tokens, "
                       f"nothing to evaluate; prepare the data with a larger --{split}-fraction")
    dataset = IndexedDataset(str(prefix))
    parts, total = [], 0
    for i in range(len(dataset)):
        parts.append(np.asarray(dataset[i], dtype=np.int64))
        total += len(parts[-1])
        if max_tokens is not None and total >= max_tokens:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return stream[:max_tokens] if max_tokens is not None else stream


@dataclass
class Windows:
    """Windows of a token stream: inputs and targets [n, window] (padded), and which targets count."""

    inputs: torch.Tensor
    targets: torch.Tensor
    scored: torch.Tensor  # bool [n, window]

    def __len__(self) -> int:
        return len(self.inputs)


def sliding_windows(stream: np.ndarray, window: int, stride: int, pad_id: int) -> Windows:
    """Windows over ``stream`` predicting every token after the first exactly once (see module doc)."""
    if not 1 <= stride <= window:
        raise GtsError(f"stride {stride} must be between 1 and the window {window}")
    targets_total = len(stream) - 1
    starts, scored_until = [], 0
    for begin in range(0, targets_total, stride):
        starts.append((begin, scored_until))
        scored_until = min(begin + window, targets_total)
        if scored_until == targets_total:
            break
    n = len(starts)
    inputs = np.full((n, window), pad_id, dtype=np.int64)
    targets = np.full((n, window), pad_id, dtype=np.int64)
    scored = np.zeros((n, window), dtype=bool)
    for row, (begin, first_new) in enumerate(starts):
        end = min(begin + window, targets_total)
        inputs[row, :end - begin] = stream[begin:end]
        targets[row, :end - begin] = stream[begin + 1:end + 1]
        scored[row, first_new - begin:end - begin] = True
    return Windows(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(scored))
