"""A run's report: ``<run>/report.md`` with its figures, from what a recipe's stages left on disk
(the demo's, or any recipe whose comparison runs over training seeds).

Its "Results" section (between the ``<!-- demo-results -->`` markers) is also what
``gts demo --readme README.md`` puts into the README, so the numbers there always come from a run.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Callable

from gts_megatron.artifacts import atomic_write_text, read_json
from gts_megatron.errors import GtsError
from gts_megatron.figures import pyplot, save_figure
from gts_megatron.plan.families import adjusted_rand_index

BEGIN, END = "<!-- demo-results:begin -->", "<!-- demo-results:end -->"


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curves(run_dir: Path, arms_dir: Path, out: Path) -> None:
    """loss_curves.png: the base's pretraining loss, then each arm's training loss (stage 2 after
    stage 1) from ``arms_dir`` (one training seed's experiment)."""
    plt = pyplot()
    fig, (base_ax, arms_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    base = [m for m in _metrics(run_dir / "base") if "loss" in m]
    base_ax.plot([m["step"] for m in base], [m["loss"] for m in base], color="black")
    base_ax.set(title="dense base pretraining", xlabel="step", ylabel="training loss")
    for arm_dir in sorted(p for p in arms_dir.iterdir() if p.is_dir()):
        steps, losses, offset = [], [], 0
        for stage in ("pretrain", "group", "learned"):
            rows = [m for m in _metrics(arm_dir / stage) if "loss" in m]
            steps += [offset + m["step"] for m in rows]
            losses += [m["loss"] for m in rows]
            offset = steps[-1] if steps else offset
        if steps:
            arms_ax.plot(steps, losses, label=arm_dir.name, linewidth=1)
    arms_ax.set(title=f"arms from the base, equal tokens ({arms_dir.name})", xlabel="step", ylabel="training loss")
    arms_ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def _adaptations(run_dir: Path) -> list[dict]:
    """Every new language's adaptation report (``<run>/adapt/<lang>/adapt.json``), by language."""
    return [read_json(path) for path in sorted((run_dir / "adapt").glob("*/adapt.json"))]


def _stage_seconds(run_dir: Path) -> dict[str, float]:
    """Each finished stage's time, in the order they ran, from the run's stage records."""
    records = [read_json(path) | {"name": path.stem} for path in (run_dir / "stages").glob("*.json")]
    done = sorted((r for r in records if r.get("seconds") is not None), key=lambda r: r["started"])
    return {r["name"]: r["seconds"] for r in done}


def _change(new: float, old: float) -> str:
    return f"{100 * (new / old - 1):+.1f}%"


def results_section(run_dir: Path) -> str:
    """The Markdown results: the comparison over training seeds with its verdicts, the
    adaptation, and the mechanism check on planted families."""
    lines = [(run_dir / "experiment" / "summary.md").read_text().strip(), ""]
    for a in _adaptations(run_dir):
        old = a["old_mean"]
        lines.append(f"- Adaptation to {a['language']} (expert {a['cloned_expert']} cloned): its perplexity "
                     f"{a['new']['before']:.1f} -> {a['new']['after']:.1f}; the old languages' mean "
                     f"{old['before']:.2f} -> {old['after']:.2f} ({old['change_percent']:+.2f}%, bar: at most 1%), "
                     f"under group routing.")
    lines.append("- " + _family_sentence(run_dir / "plan" / "families.json"))
    mechanism = run_dir / "mechanism" / "experiment" / "summary.json"
    if mechanism.is_file():
        summary = read_json(mechanism)
        gts = summary["arms"]["gts"]["mean_perplexity"]
        verdicts = "; ".join(f"{v['word']} {arm} ({summary['arms'][arm]['mean_perplexity']['mean']:.2f} ± "
                             f"{summary['arms'][arm]['mean_perplexity']['std']:.2f})"
                             for arm, v in summary["verdicts"].items())
        lines.append(f"- Mechanism check (planted families whose grammars conflict, seeds "
                     f"{', '.join(map(str, summary['seeds']))}): GtS {gts['mean']:.2f} ± {gts['std']:.2f} {verdicts}; "
                     f"the plan's groups against the planted families: ARI {_planted_ari(run_dir / 'mechanism'):.2f}.")
    return "\n".join(lines)


def _family_sentence(path: Path) -> str:
    families = read_json(path) if path.is_file() else {}
    if "family" not in families:
        return "The plan's languages are not in the family table."
    f, g = families["family"], families["genus"]
    return (f"The plan's groups against language families: ARI {f['ari']:.2f} (the best any grouping of these sizes "
            f"reaches: {f['best_reachable']:.2f}); against genera {g['ari']:.2f} (best {g['best_reachable']:.2f}).")


def _planted_ari(mechanism: Path) -> float:
    plan = read_json(mechanism / "plan" / "plan.json")
    families = read_json(mechanism / "data" / "manifest.json")["families"]
    names = sorted(families)
    return adjusted_rand_index([int(families[n].removeprefix("family")) for n in names],
                               [plan["language_to_group"][n] for n in names])


def _plan_section(run_dir: Path) -> str:
    plan = read_json(run_dir / "plan" / "plan.json")
    groups = {}
    for lang, g in plan["language_to_group"].items():
        groups.setdefault(g, []).append(lang)
    listed = "; ".join(f"group {g}: {' '.join(sorted(langs))}" for g, langs in sorted(groups.items()))
    return (f"{len(plan['languages'])} languages in {len(groups)} groups ({listed}); MoE layers "
            f"{plan['moe_layers']} (normalised mean FFN deviation >= epsilon). "
            f"{_family_sentence(run_dir / 'plan' / 'families.json')}\n\n"
            f"![similarity](plan/similarity.png)\n\n![deviations](plan/deviations.png)")


def _relative(path: str, run_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return path


def _adapt_section(run_dir: Path, a: dict) -> str:
    choice = ", ".join(f"expert of group {g}: {p:.1f}" for g, p in a["expert_choice"]["valid_perplexity"].items())
    rows = ["| language | before | after | change |", "|---|---|---|---|",
            f"| {a['language']} (new) | {a['new']['before']:.2f} | {a['new']['after']:.2f} | "
            f"{_change(a['new']['after'], a['new']['before'])} |"]
    rows += [f"| {lang} | {r['before']:.2f} | {r['after']:.2f} | {_change(r['after'], r['before'])} |"
             for lang, r in a["old"].items()]
    rows.append(f"| old mean | {a['old_mean']['before']:.2f} | {a['old_mean']['after']:.2f} | "
                f"{a['old_mean']['change_percent']:+.2f}% |")
    return (f"Starting from {_relative(a['source'], run_dir)} (group routing throughout), the valid-split "
            f"perplexity of {a['language']} with each expert under hard routing: {choice}; expert "
            f"{a['cloned_expert']} was cloned, then it and the routers trained on {a['language']} alone.\n\n"
            + "\n".join(rows))


def write_report(run_dir: Path, title: str = "GtS report", note: str = "", log: Callable = print) -> Path:
    """Write ``<run>/report.md`` (and ``loss_curves.png``) from the finished stages of a recipe's
    run whose comparison ran over training seeds."""
    needed = [run_dir / "experiment" / "summary.json", run_dir / "plan" / "plan.json", run_dir / "data" / "manifest.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise GtsError(f"cannot write the report: {', '.join(missing)} missing; run the recipe's stages before it "
                       f"(a comparison over seeds: eval.train_seeds)")
    seeds = read_json(needed[0])["seeds"]
    loss_curves(run_dir, run_dir / "experiment" / f"seed-{seeds[0]}", run_dir / "loss_curves.png")
    adaptations = _adaptations(run_dir)
    new_languages = {a["language"] for a in adaptations}
    manifest = read_json(needed[2])
    data_rows = ["| language | role | train tokens | valid | test |", "|---|---|---|---|---|"]
    for lang in manifest["languages"]:
        splits = manifest["data"][lang]["splits"]
        role = "new language (adaptation)" if lang in new_languages else "GtS"
        data_rows.append(f"| {lang} | {role} | {splits['train']['tokens']:,} | {splits['valid']['tokens']:,} | "
                         f"{splits['test']['tokens']:,} |")
    seconds = _stage_seconds(run_dir)
    timing = " | ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    sections = [
        f"# {title}", *([note] if note else []),
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}; time per stage: {timing}; "
        f"total {sum(seconds.values()) / 60:.1f} min.",
        "## Data\n\n" + "\n".join(data_rows),
        "## Probes and plan\n\n" + _plan_section(run_dir),
        "## Results\n\n" + BEGIN + "\n" + results_section(run_dir) + "\n" + END,
        "![perplexity: mean over seeds](experiment/perplexity.png)\n\n![loss curves](loss_curves.png)",
    ]
    sections += ["## New-language adaptation\n\n" + _adapt_section(run_dir, a) for a in adaptations]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n\n".join(sections) + "\n")
    log(f"wrote {path}")
    return path


def update_readme(readme: Path, report: Path) -> None:
    """Replace the results section of ``readme`` (between the markers) with the report's."""
    text, source = readme.read_text(), report.read_text()
    if BEGIN not in text or END not in text:
        raise GtsError(f"{readme} has no {BEGIN} ... {END} section to replace")
    section = source[source.index(BEGIN):source.index(END) + len(END)]
    atomic_write_text(readme, text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):])
