"""The demo's mechanism check: GtS where languages really compete for capacity.

Synthetic token languages in planted families whose grammars conflict: every family has its own
successor table over the same tokens, so a dense model must hold all the families' tables in
one MLP. The same stages as on real text (a dense base, gradient probes, a plan, and dense, GtS
and random-group arms at equal tokens over several training seeds) then show whether grouping by
the probes' similarity pays off where interference is the bottleneck.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from gts_megatron.config import (ExperimentConfig, MechanismConfig, PlanConfig, ProbeConfig, SyntheticDataConfig,
                                 build_config)
from gts_megatron.errors import Interrupted
from gts_megatron.contracts.checkpoint import finished_checkpoint
from gts_megatron.data.families import write_synthetic
from gts_megatron.plan.make import make_plan


def _train_config(steps: int, data: Path, moe: Optional[dict] = None):
    """The tiny model's training run on the planted data (the base's and, with ``moe``, every arm's)."""
    train = {"steps": steps, "micro_batch_size": 8, "global_batch_size": 16, "seq_length": 64, "lr": 3e-3,
             "min_lr": 3e-4, "warmup_steps": 10, "save_interval": 0, "eval_interval": 0, "log_interval": 50}
    return build_config({"model": "tiny", "train": train, "data": {"kind": "indexed", "path": str(data)},
                         "moe": moe or {}}, "the demo's mechanism check")


def run_mechanism(out: Path, recipe: MechanismConfig, log: Callable = print) -> dict:
    """Run (or resume) the planted-interference comparison in ``out``; returns its summary."""
    from gts_megatron.base.pretrain import pretrain
    from gts_megatron.experiment import run_seeds
    from gts_megatron.probe.fleet import run_fleet

    data, base = out / "data", out / "base"
    write_synthetic(SyntheticDataConfig(languages=recipe.languages, families=recipe.families, vocab_size=256,
                                        documents=recipe.documents, document_tokens=256), data, log=log)
    if finished_checkpoint(base, recipe.base_steps) is None:
        result = pretrain(_train_config(recipe.base_steps, data), base)
        if result.interrupted_by:
            raise Interrupted(result.interrupted_by, "the mechanism check's base")
    run_fleet(ProbeConfig(base=str(base / "checkpoints"), data=str(data), delta="gradient", tokens_per_step=4096,
                          lr=1e-3, seq_length=64, micro_batch_size=8, executor="process"), out / "probes", log=log)
    make_plan(PlanConfig(probes=str(out / "probes"), k=recipe.families, top_n=2), out / "plan", log=log)
    cfg = ExperimentConfig(base=str(base / "checkpoints"), data=str(data), plan=str(out / "plan" / "plan.json"),
                           arms=["dense", "gts", "random"], learned_steps=recipe.learned_steps,
                           train_seeds=list(recipe.train_seeds), max_tokens=recipe.max_eval_tokens)
    arms = _train_config(recipe.arm_steps, data, moe={"router_loss_weight": recipe.router_loss_weight})
    return run_seeds(cfg, arms, out / "experiment", log=log)
