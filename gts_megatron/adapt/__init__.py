"""Stage "adapt": a new language as a new expert (``gts adapt``, the paper's step 9).

1. Score the new language's perplexity (valid split) with each expert under hard routing; take the
   expert with the lowest.
2. Clone that expert, and its row of every MoE layer's router, as a new expert; the new language
   becomes a new group routed to it (``<out>/plan.json``, ``<out>/init/``).
3. Train on the new language alone with hard routing to the new expert (``<out>/train/``): only
   the new expert and the routers learn (router classification loss toward the new expert);
   attention, embeddings and the old experts are frozen, so under group routing the old languages
   keep exactly their perplexity.
4. Report the new language's and every old language's held-out perplexity before and after
   (``<out>/adapt.json`` and a table), all under group routing.

Every step is kept on disk and skipped when done, and training resumes from its checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from gts_megatron.artifacts import atomic_write_text, claim_directory
from gts_megatron.config import AdaptConfig, MoEConfig, ParallelConfig, build_config
from gts_megatron.data.manifest import load_manifest
from gts_megatron.data.mixture import check_data
from gts_megatron.engine.checkpoint import Checkpointable, load_trained, unwrap, write_moe_checkpoint
from gts_megatron.contracts.checkpoint import finished_checkpoint as finished
from gts_megatron.errors import GtsError, Interrupted
from gts_megatron.contracts.trained import TrainedModel
from gts_megatron.eval.perplexity import evaluate_cached
from gts_megatron.model import state_names
from gts_megatron.model.gts import build_moe_model
from gts_megatron.contracts.plan import Plan, write_plan
from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime



def extended_plan(plan: Plan, language: str) -> Plan:
    """``plan`` plus ``language`` as a new group served by a new expert (the last)."""
    return Plan(languages=[*plan.languages, language],
                language_to_group={**plan.language_to_group, language: plan.num_groups},
                group_to_expert=[*plan.group_to_expert, plan.num_experts], num_experts=plan.num_experts + 1,
                moe_layers=list(plan.moe_layers), inputs={"adapted_from": plan.sha256(), "new_language": language})


def cloned_state(old_state: dict, new_state: dict, source_expert: int, new_expert: int) -> dict:
    """The extended model's weights: everything from the old model, the new expert a copy of
    ``source_expert`` and each router's new row a copy of that expert's row."""
    out = {}
    for key, value in new_state.items():
        if key.endswith("_extra_state"):
            continue
        if state_names.expert_of(key) == new_expert:
            out[key] = old_state[state_names.with_expert(key, source_expert)].clone()
        elif state_names.is_router(key):
            old = old_state[key]
            out[key] = torch.cat([old, old[source_expert:source_expert + 1]]).clone()
        else:
            out[key] = old_state[key].clone()
    return out


def write_extended_checkpoint(old: TrainedModel, plan: Plan, source_expert: int, out: Path) -> Path:
    """``<out>`` (a checkpoint of the extended model, step 0); skipped when already written."""
    if (out / "latest").is_file():
        return TrainedModel.open(out).path
    init_runtime(ParallelConfig(), 1234)
    try:
        old_model = load_trained(old, "group")
        moe = MoEConfig(plan=str(out), stage="group")
        new_model, _ = build_moe_model(old.config, ParallelConfig(), moe, plan)
        with torch.no_grad():
            state = cloned_state(unwrap(old_model).state_dict(), unwrap(new_model).state_dict(),
                                 source_expert, plan.num_experts - 1)
            unwrap(new_model).load_state_dict(state, strict=False)
        return write_moe_checkpoint(out, Checkpointable(new_model, old.config), plan, old.meta.tokenizer)
    finally:
        shutdown_runtime()


def train_only(new_expert: int):
    """Freeze everything but the new expert and the routers. Dense weights stop needing gradients;
    the old experts share one checkpoint tensor per layer with the new one, so they stay in the
    optimizer with their gradients zeroed (and no weight decay, so Adam leaves them unchanged)."""
    def prepare(model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            expert = state_names.expert_of(name)
            if state_names.is_router(name) or expert == new_expert:
                continue
            if expert is not None:
                param.register_hook(torch.zeros_like)
            else:
                param.requires_grad_(False)
    return prepare


def adapt(cfg: AdaptConfig, out: Path, log=print) -> dict:
    """Add ``cfg.lang`` to the GtS model ``cfg.checkpoint`` as a new expert (module doc)."""
    old = TrainedModel.open(Path(cfg.checkpoint))
    if old.plan is None:
        raise GtsError(f"--checkpoint {old.path} is a dense model; adaptation adds an expert to a GtS model")
    if cfg.lang in old.plan.languages:
        raise GtsError(f"--lang {cfg.lang} is already in the model (group {old.plan.language_to_group[cfg.lang]}, "
                       f"languages {', '.join(old.plan.languages)}); adaptation adds a new language")
    data = load_manifest(Path(cfg.data))
    if cfg.lang not in data.languages:
        raise GtsError(f"--lang {cfg.lang} is not in {cfg.data}; it has {', '.join(data.languages)}")
    old.check_tokens(Path(cfg.data), data)
    check_data(Path(cfg.data), [cfg.lang], cfg.seq_length, old.config.vocab_size)  # enough text to train on
    eval_data = cfg.eval_data or cfg.data
    eval_manifest = load_manifest(Path(eval_data))
    old.check_tokens(Path(eval_data), eval_manifest)
    old_languages = [lang for lang in old.plan.languages if lang in eval_manifest.languages]
    if not old_languages:
        raise GtsError(f"{eval_data} has none of the model's languages ({', '.join(old.plan.languages)}); "
                       f"pass --eval-data with their held-out text")
    training = {k: getattr(cfg, k) for k in ("lang", "steps", "lr", "router_loss_weight", "micro_batch_size",
                                             "global_batch_size", "seq_length", "seed")}
    claim_directory(out, {"checkpoint": old.identity(), "data": str(Path(cfg.data).resolve()), **training},
                    "an adaptation")

    log(f"[adapt 1/4] {cfg.lang}: perplexity with each of the {old.plan.num_experts} experts")
    new_before = evaluate_cached(old.path, cfg.data, [cfg.lang], cfg, out / "before-new.json", log,
                                 routing="group", unknown_language="nearest")
    choice = new_before["languages"][cfg.lang]["nearest_group"]
    group = choice["chosen"]
    source_expert = old.plan.group_to_expert[group]
    old_before = evaluate_cached(old.path, eval_data, old_languages, cfg, out / "before-old.json", log, routing="group")

    log(f"[adapt 2/4] cloning expert {source_expert} (group {group}: "
        f"{', '.join(old.plan.groups()[group])}) as expert {old.plan.num_experts} for {cfg.lang}")
    plan = extended_plan(old.plan, cfg.lang)
    write_plan(out / "plan.json", plan)
    init = write_extended_checkpoint(old, plan, source_expert, out / "init")

    log(f"[adapt 3/4] training the new expert and the routers on {cfg.lang} for {cfg.steps} steps")
    trained = _train_new_expert(cfg, old, plan, init, out)

    log("[adapt 4/4] perplexity after adaptation")
    new_after = evaluate_cached(trained, cfg.data, [cfg.lang], cfg, out / "after-new.json", log, routing="group")
    old_after = evaluate_cached(trained, eval_data, old_languages, cfg, out / "after-old.json", log, routing="group")
    report = adaptation_report(cfg.lang, source_expert, choice, new_before, new_after, old_before, old_after)
    report["source"] = str(old.path)
    atomic_write_text(out / "adapt.json", json.dumps(report, indent=1) + "\n")
    log(adaptation_table(report))
    return report


def _train_new_expert(cfg: AdaptConfig, old: TrainedModel, plan: Plan, init: Path, out: Path) -> Path:
    """Stage-1 training of the new expert and the routers only (resumed when interrupted); its
    final checkpoint."""
    run_dir = out / "train"
    trained = finished(run_dir, cfg.steps)
    if trained is not None:
        return trained
    from gts_megatron.train import train_stage

    run_cfg = build_config({
        "model": old.config.model_dump(mode="json"),
        "train": {"steps": cfg.steps, "lr": cfg.lr, "min_lr": cfg.lr / 10, "warmup_steps": max(0, cfg.steps // 20),
                  "micro_batch_size": cfg.micro_batch_size, "global_batch_size": cfg.global_batch_size,
                  "seq_length": cfg.seq_length, "seed": cfg.seed, "init_from": str(init), "weight_decay": 0.0,
                  "save_interval": max(1, cfg.steps // 4), "eval_samples": 8},
        "data": {"kind": "indexed", "path": cfg.data, "languages": [cfg.lang]},
        "moe": {"plan": str(out / "plan.json"), "stage": "group", "router_loss_weight": cfg.router_loss_weight}},
        "adapt")
    result = train_stage(run_cfg, run_dir, prepare_model=train_only(plan.num_experts - 1))
    if result.interrupted_by:
        raise Interrupted(result.interrupted_by, "adaptation training")
    return finished(run_dir, cfg.steps)


def adaptation_report(lang, source_expert, choice, new_before, new_after, old_before, old_after) -> dict:
    """Before/after perplexities of the new and the old languages, and the old mean's change."""
    def ppl(result, language):
        return result["languages"][language]["perplexity"]

    old = {language: {"before": ppl(old_before, language), "after": ppl(old_after, language)}
           for language in old_before["languages"]}
    mean_before, mean_after = old_before["mean_perplexity"], old_after["mean_perplexity"]
    return {"language": lang, "cloned_expert": source_expert, "expert_choice": choice,
            "new": {"before": ppl(new_before, lang), "after": ppl(new_after, lang)},
            "old": old, "old_mean": {"before": mean_before, "after": mean_after,
                                     "change_percent": 100 * (mean_after - mean_before) / mean_before},
            "checkpoint": new_after["checkpoint"], "split": new_after["split"]}


def adaptation_table(report: dict) -> str:
    """The report as a table: one row per language, before, after and the change."""
    lines = [f"adapting to {report['language']} (expert {report['cloned_expert']} cloned); "
             f"{report['split']}-split perplexity under group routing",
             f"{'lang':<10}{'before':>10}{'after':>10}{'change':>9}"]
    rows = [(f"{report['language']} (new)", report["new"])] + list(report["old"].items())
    rows.append(("old mean", report["old_mean"]))
    for name, r in rows:
        lines.append(f"{name:<10}{r['before']:>10.2f}{r['after']:>10.2f}{100 * (r['after'] / r['before'] - 1):>8.2f}%")
    return "\n".join(lines)
