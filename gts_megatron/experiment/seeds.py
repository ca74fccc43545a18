"""The comparison over several training seeds, and what may be claimed from it.

One experiment per seed in ``<out>/seed-<s>/`` (the arms' ``train.seed``, and the seed of the
random grouping, so the random arm's spread covers other random groupings too), then every arm's
mean and standard deviation over the seeds. GtS "beats" another arm only where their mean ± std
intervals do not overlap: a difference smaller than the seed spread is no difference.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.config import ExperimentConfig, RunConfig
from gts_megatron.errors import GtsError


def run_seeds(cfg: ExperimentConfig, train_cfg: RunConfig, out: Path, log: Callable = print,
              on_stage: Optional[Callable[[str], None]] = None) -> dict:
    """Run (or resume) the experiment once per ``cfg.train_seeds`` and write the summary
    (summary.json, summary.md) under ``out``."""
    from gts_megatron.experiment.run import perplexity_bars, run_experiment

    seeds = cfg.train_seeds or []
    if len(seeds) < 2:
        raise GtsError("--train-seeds: give at least two seeds (a spread needs more than one run)")
    per_seed = {}
    for seed in seeds:
        log(f"== training seed {seed}")
        _share_base_evaluation(out / f"seed-{seeds[0]}", out / f"seed-{seed}")
        raw = train_cfg.model_dump(mode="json")
        raw["train"]["seed"] = seed
        per_seed[seed] = run_experiment(cfg.model_copy(update={"seed": seed, "train_seeds": None}),
                                        RunConfig.model_validate(raw), out / f"seed-{seed}", log, on_stage)
    summary = summarise(per_seed)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    means = {arm: {"mean_perplexity": r["mean_perplexity"]["mean"],
                   "languages": {lang: {"perplexity": v["mean"]} for lang, v in r["languages"].items()}}
             for arm, r in summary["arms"].items()}
    perplexity_bars(out / "perplexity.png", means, summary["languages"])
    text = summary_markdown(summary)
    atomic_write_text(out / "summary.md", text)
    log(text)
    return summary


def _share_base_evaluation(first: Path, other: Path) -> None:
    """The base is the same for every seed: its evaluation is made once (the copy is reused only
    where its key, the checkpoint and the settings, still matches)."""
    source, target = first / "base" / "eval.json", other / "base" / "eval.json"
    if source.is_file() and not target.exists() and first != other:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, source.read_text())


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation and the values themselves."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "values": [float(v) for v in array]}


def summarise(per_seed: dict[int, dict]) -> dict:
    """Each arm's mean perplexity (and each language's) as mean, std and per-seed values, and GtS
    against every other arm."""
    first = next(iter(per_seed.values()))
    arms = [a for a in first if a != "base"]
    languages = list(first[arms[0]]["languages"])
    summary = {"seeds": list(per_seed), "languages": languages, "arms": {}}
    for arm in ["base", *arms]:
        runs = [per_seed[s][arm] for s in per_seed]
        summary["arms"][arm] = {
            "mean_perplexity": spread([r["mean_perplexity"] for r in runs]),
            "languages": {lang: spread([r["languages"][lang]["perplexity"] for r in runs]) for lang in languages},
            "parameters": runs[0]["parameters"]}
    if "gts" in arms:
        summary["verdicts"] = {other: verdict(summary["arms"]["gts"]["mean_perplexity"],
                                              summary["arms"][other]["mean_perplexity"])
                               for other in arms if other != "gts"}
    return summary


def verdict(gts: dict, other: dict) -> dict:
    """GtS against another arm: the gap of the means, per-seed wins, and "beats" (lower by more
    than both spreads: the mean ± std intervals do not overlap), "loses to" (the reverse) or
    "level with"."""
    gap = other["mean"] - gts["mean"]
    wins = sum(g < o for g, o in zip(gts["values"], other["values"]))
    if gts["mean"] + gts["std"] < other["mean"] - other["std"]:
        word = "beats"
    elif other["mean"] + other["std"] < gts["mean"] - gts["std"]:
        word = "loses to"
    else:
        word = "level with"
    return {"word": word, "gap": gap, "gap_percent": 100 * gap / other["mean"], "seed_wins": wins,
            "seeds": len(gts["values"])}


def summary_markdown(summary: dict) -> str:
    """The table (mean ± std per arm and language) and the verdicts, in Markdown."""
    langs = summary["languages"]
    lines = [f"Held-out perplexity, mean ± std over training seeds {', '.join(map(str, summary['seeds']))}.", "",
             "| model | parameters | active | mean ppl | " + " | ".join(langs) + " |",
             "|" + "---|" * (4 + len(langs))]
    for arm, r in summary["arms"].items():
        cells = " | ".join(f"{r['languages'][lang]['mean']:.1f}" for lang in langs)
        m = r["mean_perplexity"]
        lines.append(f"| {arm} | {r['parameters']['total'] / 1e6:.2f}M | {r['parameters']['active'] / 1e6:.2f}M | "
                     f"{m['mean']:.2f} ± {m['std']:.2f} | {cells} |")
    lines.append("")
    gts = summary["arms"].get("gts", {}).get("mean_perplexity")
    for other, v in summary.get("verdicts", {}).items():
        o = summary["arms"][other]["mean_perplexity"]
        lines.append(f"- GtS {v['word']} {other}: {gts['mean']:.2f} ± {gts['std']:.2f} vs {o['mean']:.2f} ± "
                     f"{o['std']:.2f} ({-v['gap_percent']:+.1f}%; lower in {v['seed_wins']} of {v['seeds']} seeds).")
    return "\n".join(lines) + "\n"
