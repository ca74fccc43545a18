"""The probe store: what each language's probe leaves behind, kilobytes rather than a model.

Layout of ``<run>/probes/``::

    <lang>.json          ProbeResult: per-layer deviation norms (FFN and attention), sketch info
    <lang>.safetensors   one float32 vector per layer, "ffn.<layer>": the sketch of that layer's
                         FFN weight delta (or the whole delta with kind "exact")

Every language's sketch uses the same seed and size, so dot products between languages' sketches
estimate dot products between their deltas; per-layer sketches concatenate into a sketch of the
concatenated layers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.errors import GtsError

FORMAT = "gts-probe/1"


class SketchInfo(BaseModel):
    """How the FFN deltas were summarised."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["countsketch", "exact"]
    size: Optional[int] = None  # sketch length per layer (countsketch)
    seed: Optional[int] = None


class ProbeResult(BaseModel):
    """One language's probe."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["gts-probe/1"] = FORMAT
    language: str
    delta_norm_ffn: list[float]
    delta_norm_att: list[float]
    sketch: Optional[SketchInfo] = None
    model: dict = {}  # the probed model's config (for parameter counts downstream)
    inputs: dict = {}  # base checkpoint, data, steps, learning rate: what made it


def write_probe(store: Path, result: ProbeResult, sketches: Optional[dict[int, np.ndarray]] = None) -> None:
    """Write one language's result (sketches first, then the JSON that marks it complete)."""
    from safetensors.numpy import save_file

    store.mkdir(parents=True, exist_ok=True)
    if sketches is not None:
        tmp = store / f".{result.language}.safetensors.tmp"
        save_file({f"ffn.{layer}": np.ascontiguousarray(v, dtype=np.float32) for layer, v in sketches.items()},
                  str(tmp))
        tmp.replace(store / f"{result.language}.safetensors")
    atomic_write_text(store / f"{result.language}.json", json.dumps(result.model_dump(mode="json")) + "\n")


def read_probe(store: Path, language: str) -> ProbeResult:
    """One language's result, validated (finite deviations of equal length)."""
    path = store / f"{language}.json"
    if not path.is_file():
        raise GtsError(f"{store}: no probe for language {language!r} ({path.name} missing); run `gts probe`")
    try:
        result = ProbeResult.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise GtsError(f"{path}: not a valid probe result ({str(exc).splitlines()[0]})") from None
    for name in ("delta_norm_ffn", "delta_norm_att"):
        values = getattr(result, name)
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise GtsError(f"{path}: {name} is not finite at layer(s) {bad} ({values[bad[0]]}); re-run the probe")
    return result


def read_sketches(store: Path, language: str, layers: list[int]) -> np.ndarray:
    """The concatenated sketches of ``layers`` for one language."""
    from safetensors.numpy import load_file

    path = store / f"{language}.safetensors"
    if not path.is_file():
        raise GtsError(f"{store}: probe of {language!r} has no sketch file {path.name}")
    tensors = load_file(str(path))
    missing = [layer for layer in layers if f"ffn.{layer}" not in tensors]
    if missing:
        raise GtsError(f"{path}: no sketch for layer(s) {missing}")
    vector = np.concatenate([tensors[f"ffn.{layer}"].astype(np.float64) for layer in layers])
    if not np.isfinite(vector).all():
        raise GtsError(f"{path}: the sketch has NaN or infinite values; re-run the probe")
    return vector


def stored_languages(store: Path) -> list[str]:
    """Languages with a complete result in the store."""
    return sorted(p.stem for p in store.glob("*.json") if not p.name.startswith("."))
