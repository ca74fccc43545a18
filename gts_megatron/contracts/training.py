"""How an arm of the comparison, or a recipe's GtS run, trains: its stages in order and the run
config of each. Shared by `gts experiment` and `gts run`, so both train a GtS model alike."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gts_megatron.config import RunConfig


@dataclass(frozen=True)
class Arm:
    """An arm as its stages see it: its kind (dense, gts, random, ...), its plan file (None for
    dense), the steps of its learned stage, and the samples the base was pretrained on (where every
    arm starts reading the mixture)."""

    kind: str
    plan: Optional[Path]
    learned_steps: int
    base_samples: int


def stages(arm: str, steps: int, learned_steps: int) -> list[tuple[str, int]]:
    """(stage, steps) in order: pretrain (dense continued training), group, learned."""
    if arm == "dense":
        return [("pretrain", steps)]
    if arm == "upcycle":
        return [("learned", steps)]
    first = steps - learned_steps
    return [("group", first)] + ([("learned", learned_steps)] if learned_steps else [])


def stage_config(base: RunConfig, arm: Arm, stage: str, init_from: Path) -> RunConfig:
    """The run config of one training stage of an arm. Every arm reads the mixture from where the
    base's pretraining stopped (``arm.base_samples``), so all arms see the same new samples. A
    two-stage arm follows one learning-rate schedule over ``base.train.steps``: stage 1 stops
    part-way down it and stage 2 goes on from the rate stage 1 ended with and the samples after
    stage 1's (restarting at the peak rate would cost what it gained)."""
    raw = base.model_dump(mode="json")
    total = base.train.steps
    plan = dict(stages(arm.kind, total, arm.learned_steps))
    train = raw["train"]
    offset = arm.base_samples + (plan["group"] * base.train.global_batch_size if stage == "learned" and len(plan) == 2
                             else 0)
    train.update(steps=plan[stage], init_from=str(init_from), data_offset=offset)
    if len(plan) == 2 and stage == "group":
        train.update(lr_decay_steps=base.train.lr_decay_steps or total)
    elif len(plan) == 2 and stage == "learned":
        first = plan["group"]
        # a short warm-up all the same: the optimizer state starts afresh, and Adam's first
        # steps at full rate move every weight by about the rate (measured: it costs stage 2)
        train.update(lr=base.train.lr_at(first), warmup_steps=min(base.train.warmup_steps, plan[stage] // 4),
                     lr_decay_steps=max(1, (base.train.lr_decay_steps or total) - first))
    raw["moe"].update(plan=str(arm.plan) if arm.plan else None, stage="learned" if stage == "learned" else "group")
    if arm.kind == "upcycle":  # no groups to hand over from: its copies start out equal anyway
        raw["moe"].update(handover=0.0)
    return RunConfig.model_validate(raw)
