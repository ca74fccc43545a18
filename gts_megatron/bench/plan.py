"""`gts bench plan`: planning time for many languages from sketches (goal: 128 in under 2 s).

The probe store is synthetic with planted families (each language's per-layer sketch is its
family's centroid plus noise), so the benchmark also reports whether the families came back.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from gts_megatron.artifacts import scratch_directory
from gts_megatron.bench import machine
from gts_megatron.config import PlanConfig
from gts_megatron.plan.families import adjusted_rand_index
from gts_megatron.probe.store import ProbeResult, SketchInfo, write_probe
from gts_megatron.plan.make import make_plan


def planted_probe_store(store: Path, languages: int, families: int, layers: int = 24, sketch_size: int = 4096,
                        noise: float = 0.5, seed: int = 0, names: Optional[list[str]] = None) -> dict[str, int]:
    """Write a probe store whose languages (``names``, or l000, l001, ...) come in ``families``
    planted families, dealt round-robin; returns language -> family. Deviation norms follow a
    U-shaped profile over layers, as in the paper."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((families, layers, sketch_size))
    profile = 1.0 + np.cos(np.linspace(0, 2 * np.pi, layers))  # large at both ends
    truth = {}
    for index in range(languages):
        name, family = names[index] if names else f"l{index:03d}", index % families
        sketches = centroids[family] + noise * rng.standard_normal((layers, sketch_size))
        norms = profile * (1 + 0.05 * rng.standard_normal(layers)) + 0.1
        write_probe(store, ProbeResult(language=name, delta_norm_ffn=norms.tolist(), delta_norm_att=(norms / 2).tolist(),
                                       sketch=SketchInfo(kind="countsketch", size=sketch_size, seed=seed)),
                    {layer: sketches[layer] for layer in range(layers)})
        truth[name] = family
    return truth


def bench_plan(languages: int = 128, families: int = 16, sketch_size: int = 4096, figures: bool = False,
               work_dir: Optional[Path] = None) -> dict:
    """Time `gts plan` (balanced grouping into ``families`` groups) on a planted store."""
    with scratch_directory("bench", work_dir) as root:
        truth = planted_probe_store(root / "probes", languages, families, sketch_size=sketch_size)
        cfg = PlanConfig(probes=str(root / "probes"), k=families, plots=figures)
        started = time.perf_counter()
        plan = make_plan(cfg, root / "plan", log=lambda *_: None)
        elapsed = time.perf_counter() - started
    names = sorted(truth)
    ari = adjusted_rand_index([truth[n] for n in names], [plan.language_to_group[n] for n in names])
    return {"benchmark": "plan", "languages": languages, "groups": families, "sketch_size": sketch_size,
            "layers_compared": 3, "figures": figures, "seconds": round(elapsed, 3), "adjusted_rand_index": ari,
            "moe_layers": plan.moe_layers, **machine()}


def report(result: dict) -> str:
    """A readable summary of :func:`bench_plan`'s result, then the result as JSON."""
    return "\n".join([
        f"plan for {result['languages']} languages into {result['groups']} groups from {result['sketch_size']}-long "
        f"sketches ({'with' if result['figures'] else 'without'} figures): {result['seconds']:.2f} s "
        f"(goal < 2 s); planted families recovered with ARI {result['adjusted_rand_index']:.3f}",
        json.dumps(result)])
