"""A seeded synthetic token stream: learnable, infinite, and the same for every parallel layout.

Each sequence is a walk on a fixed random Markov chain (every token has a few possible
successors with fixed probabilities), so a model's loss falls from ln(vocab) towards the chain's
entropy. Sample ``i`` of a split depends only on (seed, split, i): any rank can build any sample,
and a resumed run reads exactly what an uninterrupted one would have.
"""
from __future__ import annotations

import numpy as np
import torch

_SPLITS = {"train": 0, "valid": 1, "test": 2}


class SyntheticTokens:
    """Sequences of ``seq_length + 1`` tokens (inputs plus the shifted label) from a Markov chain."""

    def __init__(self, vocab_size: int, seq_length: int, seed: int, successors: int = 4):
        rng = np.random.default_rng([seed, 0xC0FFEE])
        self.vocab_size, self.seq_length, self.seed = vocab_size, seq_length, seed
        self.next_tokens = rng.integers(0, vocab_size, size=(vocab_size, successors))
        weights = 1.0 / np.arange(1, successors + 1)  # Zipf-like: a few likely continuations
        self.probs = weights / weights.sum()

    def entropy(self) -> float:
        """The chain's per-token entropy in nats: the loss a perfect model reaches."""
        return float(-(self.probs * np.log(self.probs)).sum())

    def eval_sets(self, max_samples: int) -> list[tuple[str, str, int]]:
        """(name, split key, samples) of each validation set: one, of ``max_samples`` sequences."""
        return [("all", "valid", max_samples)]

    def batch(self, indices: list[int], split: str = "train") -> dict[str, torch.Tensor]:
        """Samples ``indices`` of ``split`` as {"tokens": [b, s], "labels": [b, s]} (int64)."""
        length = self.seq_length + 1
        seqs = np.empty((len(indices), length), dtype=np.int64)
        choices = np.empty((len(indices), length - 1), dtype=np.int64)
        for row, index in enumerate(indices):
            rng = np.random.default_rng([self.seed, _SPLITS[split], index])
            seqs[row, 0] = rng.integers(0, self.vocab_size)
            choices[row] = rng.choice(len(self.probs), size=length - 1, p=self.probs)
        for t in range(1, length):  # vectorised over the batch, sequential over time
            seqs[:, t] = self.next_tokens[seqs[:, t - 1], choices[:, t - 1]]
        data = torch.from_numpy(seqs)
        return {"tokens": data[:, :-1].contiguous(), "labels": data[:, 1:].contiguous()}
