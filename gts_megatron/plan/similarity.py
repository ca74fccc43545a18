"""Language similarity: cosine between languages' FFN weight deltas (through their sketches).

The paper compares the concatenated FFN deltas of the last 3 layers; "all" layers or a list can
be chosen instead. Distance = 1 - cosine, clipped to [0, 2] against rounding.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from gts_megatron.errors import GtsError
from gts_megatron.probe.store import read_sketches

LayerChoice = Union[str, list[int]]


def similarity_layers(choice: LayerChoice, num_layers: int) -> list[int]:
    """"last3" (the paper's), "all", or explicit layer indices, checked against the model."""
    if choice == "last3":
        return list(range(max(0, num_layers - 3), num_layers))
    if choice == "all":
        return list(range(num_layers))
    layers = list(choice)
    outside = [layer for layer in layers if not 0 <= layer < num_layers]
    if outside or not layers:
        raise GtsError(f"--similarity-layers {layers}: must be layers of the probed model (0..{num_layers - 1})")
    return layers


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``vectors``."""
    norms = np.linalg.norm(vectors, axis=1)
    zero = [i for i, n in enumerate(norms) if n == 0]
    if zero:
        raise GtsError(f"language(s) at row(s) {zero} have an all-zero delta: their probe did not move the model")
    unit = vectors / norms[:, None]
    return np.clip(unit @ unit.T, -1.0, 1.0)


def similarity_from_store(store: Path, languages: list[str], layers: list[int]) -> np.ndarray:
    """Cosine similarity of the languages' concatenated per-layer FFN sketches."""
    return cosine_matrix(np.stack([read_sketches(store, lang, layers) for lang in languages]))


def distance_from_similarity(similarity: np.ndarray) -> np.ndarray:
    """1 - cosine, symmetric with a zero diagonal."""
    distance = np.clip(1.0 - similarity, 0.0, 2.0)
    distance = (distance + distance.T) / 2
    np.fill_diagonal(distance, 0.0)
    return distance
