"""CountSketch: a fixed-size linear summary of a weight delta, the same for every language.

sketch[b] = sum over i with h(i) = b of s(i) * x[i], with h and s derived from a seeded hash of
the global index i (no table of size D is ever stored, so a delta of any size is sketched chunk
by chunk). The map is linear and the same for every language, so <sketch(x), sketch(y)> is an
unbiased estimate of <x, y>, with standard deviation about ||x|| ||y|| / sqrt(size): cosine
similarities come back to within about 1 / sqrt(size).
"""
from __future__ import annotations

import numpy as np
import torch

_CHUNK = 1 << 22  # elements hashed at a time


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed 64-bit hash of each uint64 value."""
    z = values + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def count_sketch(vector: torch.Tensor, size: int, seed: int, offset: int = 0,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Add the CountSketch of ``vector`` (a flat slice starting at global index ``offset``) into
    ``out`` (float64 [size], created when None) and return it."""
    out = np.zeros(size, dtype=np.float64) if out is None else out
    flat = vector.detach().reshape(-1).to(torch.float64).cpu().numpy()
    salt = np.uint64((seed * 0x632BE59BD9B4E019) % (1 << 64))
    with np.errstate(over="ignore"):
        for start in range(0, flat.size, _CHUNK):
            index = np.arange(offset + start, offset + min(start + _CHUNK, flat.size), dtype=np.uint64)
            hashed = _mix(index ^ salt)
            buckets = (hashed % np.uint64(size)).astype(np.int64)
            signs = np.where((hashed >> np.uint64(63)) == 1, -1.0, 1.0)
            out += np.bincount(buckets, weights=signs * flat[start:start + _CHUNK], minlength=size)
    return out


def sketch_tensors(tensors: list[torch.Tensor], size: int, seed: int) -> np.ndarray:
    """The CountSketch of the concatenation of ``tensors`` (flattened in order)."""
    out, offset = np.zeros(size, dtype=np.float64), 0
    for tensor in tensors:
        count_sketch(tensor, size, seed, offset, out)
        offset += tensor.numel()
    return out
