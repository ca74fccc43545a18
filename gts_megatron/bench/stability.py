"""`gts bench stability`: do probes measure the languages or the noise of their own samples?

Probes the same base on the same data once per seed (each seed draws other training samples and
another sketch hash), then plans each seed's probes the way `gts plan` does and compares the
seeds: the Spearman correlation of their similarity matrices over all language pairs, the
adjusted Rand index (ARI) between their groupings, whether they pick the same MoE layers, and
each grouping's ARI against the language families. Each seed's probe store is kept under the
output folder, so a rerun (or a run with more seeds) probes only what is missing.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.config import ProbeConfig, StabilityConfig
from gts_megatron.plan import grouping
from gts_megatron.plan.families import adjusted_rand_index, family_agreement
from gts_megatron.plan.layers import deviation_matrix, normalised_profile, select_layers
from gts_megatron.plan.similarity import similarity_from_store, similarity_layers
from gts_megatron.probe.store import read_probe


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally long vectors."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def plan_of_store(store: Path, languages: list[str], k: int, epsilon: float,
                  methods: tuple[str, ...] = ("balanced",)) -> dict:
    """What `gts plan` would decide from one probe store: similarity (last 3 layers), MoE layers,
    and the groups (as a label per language) by each grouping method."""
    ffn = {lang: read_probe(store, lang).delta_norm_ffn for lang in languages}
    matrix = deviation_matrix(ffn)
    layers = similarity_layers("last3", matrix.shape[1])
    similarity = similarity_from_store(store, languages, layers)
    distance = np.clip(1.0 - similarity, 0.0, 2.0)
    labels = {}
    for method in methods:
        labels[method] = [0] * len(languages)
        for g, members in enumerate(grouping.by_method(method, distance, k)):
            for i in members:
                labels[method][i] = g
    return {"similarity": similarity, "labels": labels,
            "moe_layers": select_layers(normalised_profile(matrix), epsilon)}


def _compare(plans: dict, languages: list[str], methods: list[str]) -> tuple[list[dict], dict]:
    """Every pair of seeds compared, and each seed's groups by method with their family ARIs."""
    upper = np.triu_indices(len(languages), 1)
    pairs = []
    for a, b in itertools.combinations(plans, 2):
        pairs.append({"seeds": [a, b],
                      "spearman": round(spearman(plans[a]["similarity"][upper], plans[b]["similarity"][upper]), 4),
                      "grouping_ari": {m: round(adjusted_rand_index(plans[a]["labels"][m], plans[b]["labels"][m]), 4)
                                       for m in methods},
                      "same_moe_layers": plans[a]["moe_layers"] == plans[b]["moe_layers"]})
    per_seed = {}
    for seed, plan in plans.items():
        per_seed[seed] = {"moe_layers": plan["moe_layers"], "groups": {}, "family_ari": {}, "genus_ari": {},
                          "mean_off_diagonal_cosine": round(float(plan["similarity"][upper].mean()), 4)}
        for method in methods:
            groups = {lang: plan["labels"][method][i] for i, lang in enumerate(languages)}
            per_seed[seed]["groups"][method] = [[lang for lang in languages if groups[lang] == g]
                                                for g in sorted(set(groups.values()))]
            agreement = family_agreement(groups)
            for level in ("family", "genus"):
                if level in agreement:
                    per_seed[seed][f"{level}_ari"][method] = agreement[level]["ari"]
    return pairs, per_seed


def probe_stability(options: StabilityConfig, log: Callable = print) -> dict:
    """Probe with every seed into ``<out>/seed-<s>`` and compare the seeds' plans; writes
    ``<out>/stability.json``."""
    from gts_megatron.probe.fleet import run_fleet

    seeds, k, out, methods = options.seeds, options.k, Path(options.out), list(dict.fromkeys(options.methods))
    cfg = ProbeConfig.model_validate(options.model_dump(include=set(ProbeConfig.model_fields)))
    plans, seconds = {}, {}
    for seed in seeds:
        store = out / f"seed-{seed}"
        began = time.perf_counter()
        run_fleet(cfg.model_copy(update={"seed": seed}), store, log=log)
        seconds[seed] = round(time.perf_counter() - began, 1)
        languages = cfg.languages or sorted(p.stem for p in store.glob("*.json"))
        plans[seed] = plan_of_store(store, languages, k, options.epsilon, tuple(methods))
    pairs, per_seed = _compare(plans, languages, methods)
    for seed in seeds:
        per_seed[seed]["probe_seconds"] = seconds[seed]
    tokens = cfg.steps * cfg.sequences_per_step * cfg.seq_length
    result = {"probe": {**cfg.model_dump(mode="json", exclude={"seed", "address"}), "tokens_per_probe": tokens},
              "k": k, "methods": methods, "languages": languages, "pairs": pairs, "seeds": per_seed,
              "min_spearman": min(p["spearman"] for p in pairs),
              "min_grouping_ari": {m: min(p["grouping_ari"][m] for p in pairs) for m in methods}}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "stability.json", json.dumps(result, indent=1) + "\n")
    return result


def report(result: dict) -> str:
    """The comparison in a few lines."""
    p, methods = result["probe"], result["methods"]
    lines = [f"probes: {p['delta']} delta, {p['steps']} steps x {p['tokens_per_probe'] // p['steps']:,} tokens "
             f"(lr {p['lr']}), {len(result['languages'])} languages, k={result['k']}"]
    for pair in result["pairs"]:
        aris = ", ".join(f"{m} {pair['grouping_ari'][m]:.3f}" for m in methods)
        lines.append(f"  seeds {pair['seeds'][0]} vs {pair['seeds'][1]}: similarity Spearman {pair['spearman']:.3f}, "
                     f"grouping ARI {aris}, same MoE layers {pair['same_moe_layers']}")
    for seed, s in result["seeds"].items():
        lines.append(f"  seed {seed}: layers {s['moe_layers']}; {s['probe_seconds']} s")
        for m in methods:
            groups = " / ".join("+".join(g) for g in s["groups"][m])
            known = "; ".join(f"{level} ARI {s[f'{level}_ari'][m]:.2f}" for level in ("family", "genus")
                              if m in s[f"{level}_ari"])
            lines.append(f"    {m}: {groups}; {known or 'families unknown'}")
    aris = ", ".join(f"{m} {result['min_grouping_ari'][m]:.3f}" for m in methods)
    lines.append(f"min Spearman {result['min_spearman']:.3f}, min grouping ARI {aris}")
    return "\n".join(lines)
