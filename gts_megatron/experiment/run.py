"""`gts experiment`: train every arm from the same dense base on the same tokens, evaluate each,
and write the comparison (results.json, results.md, perplexity.png) under the output directory.

Each stage of each arm is an ordinary training run in ``<out>/<arm>/<stage>/``: interrupted, it
resumes from its checkpoint; finished, it is skipped. Evaluations are kept in
``<out>/<arm>/eval.json`` and reused while their checkpoint and settings are unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from gts_megatron.artifacts import atomic_write_text, claim_directory
from gts_megatron.config import ExpandConfig, ExperimentConfig, RunConfig
from gts_megatron.data.manifest import load_manifest
from gts_megatron.errors import GtsError, Interrupted
from gts_megatron.eval.perplexity import evaluate_cached
from gts_megatron.contracts.trained import TrainedModel
from gts_megatron.contracts.checkpoint import finished_checkpoint as finished
from gts_megatron.contracts.training import Arm, stage_config, stages
from gts_megatron.experiment.arms import arm_plan
from gts_megatron.figures import pyplot, save_figure
from gts_megatron.contracts.plan import Plan, load_plan, write_plan

def _train_stage(stage: str, cfg: RunConfig, run_dir: Path):
    from gts_megatron.base.pretrain import pretrain
    from gts_megatron.train import train_stage

    return (pretrain if stage == "pretrain" else train_stage)(cfg, run_dir)


def _checked_inputs(cfg: ExperimentConfig, train_cfg: RunConfig) -> tuple[TrainedModel, Plan, RunConfig]:
    """The base, the plan and the arms' run config, each checked before anything is written: a
    dense base, a plan the model holds, data with the plan's languages and the base's tokens."""
    base = TrainedModel.open(Path(cfg.base))
    if base.plan is not None:
        raise GtsError(f"--base {base.path} is an MoE model; the arms start from the dense base checkpoint")
    plan = load_plan(Path(cfg.plan))
    plan.check_model(base.config.num_layers, cfg.plan)
    manifest = load_manifest(Path(cfg.data))
    base.check_tokens(Path(cfg.data), manifest)
    missing = [lang for lang in plan.languages if lang not in manifest.languages]
    if missing:
        raise GtsError(f"{cfg.plan}: languages {', '.join(missing)} are not in {cfg.data}")
    steps = train_cfg.train.steps
    if cfg.learned_steps >= steps and any(a in ("gts", "random", "per-language") for a in cfg.arms):
        raise GtsError(f"--learned-steps {cfg.learned_steps} leaves no stage-1 steps of train.steps {steps}")
    raw = train_cfg.model_dump(mode="json")
    raw.update(model=base.config.model_dump(mode="json"),
               data={**raw["data"], "kind": "indexed", "path": cfg.data, "languages": list(plan.languages)})
    return base, plan, RunConfig.model_validate(raw)


def run_experiment(cfg: ExperimentConfig, train_cfg: RunConfig, out: Path, log: Callable = print,
                   on_stage: Optional[Callable[[str], None]] = None) -> dict:
    """Run (or resume) every arm of ``cfg`` with the training settings of ``train_cfg`` (its model
    section is replaced by the base's) and write the comparison under ``out``. Runs in one process."""
    base, plan, run = _checked_inputs(cfg, train_cfg)
    steps = run.train.steps
    base_samples = int(base.meta.train_state.get("consumed_samples", 0))
    claim_directory(out, {"base": base.identity(), "plan": plan.sha256(), "data": str(Path(cfg.data).resolve()),
                          "train": run.model_dump(mode="json"), "learned_steps": cfg.learned_steps,
                          "upcycle_experts": cfg.upcycle_experts, "seed": cfg.seed}, "an experiment")

    # every arm's plan and stage configs first, so a bad one stops the experiment before any training
    arms = {}
    for arm in cfg.arms:
        arm_dir = out / arm
        p = arm_plan(arm, plan, base.config.num_layers, cfg)
        plan_path = arm_dir / "plan.json" if p is not None else None
        if p is not None:
            write_plan(plan_path, p)
        arms[arm] = (arm_dir, p, Arm(arm, plan_path, cfg.learned_steps, base_samples))
        for stage, _ in stages(arm, steps, cfg.learned_steps):
            stage_config(run, arms[arm][2], stage, base.path)

    results = {"base": evaluate_cached(base.path, cfg.data, plan.languages, cfg, out / "base" / "eval.json", log)}
    for arm, (arm_dir, p, spec) in arms.items():
        if on_stage:
            on_stage(arm)
        init = base.path
        if p is not None:
            from gts_megatron.expand import expand

            init = expand(base.path, spec.plan, arm_dir / "moe", ExpandConfig(optimizer_state=run.train.init_optimizer),
                          log=log)
        for stage, n in stages(arm, steps, cfg.learned_steps):
            run_dir = arm_dir / stage
            done = finished(run_dir, n)
            if done is None:
                log(f"{arm}: {stage} for {n} steps in {run_dir}")
                stage_cfg = stage_config(run, spec, stage, init)
                result = _train_stage(stage, stage_cfg, run_dir)
                if result.interrupted_by:
                    raise Interrupted(result.interrupted_by, f"{arm}/{stage}")
                done = finished(run_dir, n)
            init = done
        results[arm] = evaluate_cached(init, cfg.data, plan.languages, cfg, arm_dir / "eval.json", log)
        results[arm]["plan"] = p.model_dump(mode="json") if p is not None else None
    summary = write_comparison(out, results, plan.languages, tokens=steps * run.train.global_batch_size *
                               run.train.seq_length)
    log(summary)
    return results


def comparison_table(results: dict, languages: list[str]) -> str:
    """The paper-style Markdown table: parameters, mean and per-language perplexity per arm."""
    head = "| model | experts | MoE layers | parameters | active | mean ppl | " + " | ".join(languages) + " |"
    lines = [head, "|" + "---|" * (6 + len(languages))]
    for name, r in results.items():
        plan = r.get("plan")
        experts = plan["num_experts"] if plan else "-"
        layers = len(plan["moe_layers"]) if plan else "-"
        ppl = " | ".join(f"{r['languages'][lang]['perplexity']:.1f}" for lang in languages)
        lines.append(f"| {name} | {experts} | {layers} | {r['parameters']['total'] / 1e6:.2f}M | "
                     f"{r['parameters']['active'] / 1e6:.2f}M | {r['mean_perplexity']:.2f} | {ppl} |")
    return "\n".join(lines)


def write_comparison(out: Path, results: dict, languages: list[str], tokens: int) -> str:
    """results.json, results.md and perplexity.png (per-language bars per arm) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps({"training_tokens_per_arm": tokens, "arms": results},
                                                       indent=1) + "\n")
    table = comparison_table(results, languages)
    text = (f"Held-out perplexity ({next(iter(results.values()))['split']} split); every arm trained on "
            f"{tokens:,} tokens from the same base.\n\n{table}\n")
    atomic_write_text(out / "results.md", text)
    perplexity_bars(out / "perplexity.png", results, languages)
    return text


def perplexity_bars(path: Path, results: dict, languages: list[str]) -> None:
    """Grouped bars: per language (and the mean), one bar per model."""
    plt = pyplot()
    names = list(results)
    columns = [*languages, "mean"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(columns) * max(1, len(names) / 3)), 4))
    for i, name in enumerate(names):
        r = results[name]
        values = [r["languages"][lang]["perplexity"] for lang in languages] + [r["mean_perplexity"]]
        ax.bar([c + i * width - 0.4 + width / 2 for c in range(len(columns))], values, width, label=name)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Per-language perplexity at equal training tokens")
    fig.tight_layout()
    save_figure(fig, path)
