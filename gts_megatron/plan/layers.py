"""Which layers become MoE layers: the ones whose FFN moved most while probing.

The paper's rule: m[l] = mean over languages of the FFN deviation of layer l; min-max normalise m
over layers; layer l is an MoE layer iff m_norm[l] >= epsilon (0.6 by default). Or the top-n
layers by m, or layers the user names (to measure a layer the rule would not pick).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from gts_megatron.errors import GtsError


def deviation_matrix(deviations: dict[str, list[float]], what: str = "delta_norm_ffn") -> np.ndarray:
    """[languages, layers] deviations, refused if ragged, empty, NaN or infinite."""
    if not deviations:
        raise GtsError(f"no {what} deviations to select layers from")
    lengths = {lang: len(v) for lang, v in deviations.items()}
    if len(set(lengths.values())) != 1:
        raise GtsError(f"{what}: languages have different layer counts {lengths}")
    for lang, values in deviations.items():
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise GtsError(f"{what} of {lang!r} is {values[bad[0]]} at layer {bad[0]}; deviations must be finite")
    return np.asarray(list(deviations.values()), dtype=np.float64)


def normalised_profile(matrix: np.ndarray) -> np.ndarray:
    """Mean over languages, min-max normalised over layers to [0, 1]."""
    mean = matrix.mean(axis=0)
    span = mean.max() - mean.min()
    if span <= 0:
        raise GtsError("every layer has the same mean deviation; there is nothing to select by")
    return (mean - mean.min()) / span


def select_layers(profile: np.ndarray, epsilon: Optional[float] = 0.6, top_n: Optional[int] = None,
                  named: Optional[list[int]] = None) -> list[int]:
    """Layers with normalised deviation >= ``epsilon``, or the ``top_n`` largest (ties: lower index),
    or the ``named`` ones (checked against the model's layer count)."""
    if named is not None:
        beyond = [i for i in named if not 0 <= i < len(profile)]
        if beyond:
            raise GtsError(f"--moe-layers {beyond[0]}: the probed model has layers 0 to {len(profile) - 1}")
        return sorted(named)
    if top_n is not None:
        if not 1 <= top_n <= len(profile):
            raise GtsError(f"--top-n {top_n}: must be between 1 and the {len(profile)} layers")
        order = sorted(range(len(profile)), key=lambda i: (-profile[i], i))
        return sorted(order[:top_n])
    if epsilon is None or not 0 <= epsilon <= 1:
        raise GtsError(f"--epsilon {epsilon}: must be between 0 and 1")
    return [i for i, value in enumerate(profile) if value >= epsilon]
