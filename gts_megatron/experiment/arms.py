"""The arms of the comparison: the plan each MoE arm is expanded with, and how each is trained.

Every arm starts from the same dense base and trains for the same ``train.steps`` on the same
data, so all see the same tokens:

- dense: continued training of the dense model;
- gts: the plan's groups (stage 1, then ``learned_steps`` of stage 2);
- random: the plan's MoE layers and group sizes, languages assigned to groups at random;
- per-language: the plan's MoE layers, one expert per language;
- upcycle: plain sparse upcycling, k copies of the MLP in every layer behind megatron's learned
  top-k router (stage 2 only; no groups).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

from gts_megatron.config import ExperimentConfig, RunConfig
from gts_megatron.engine.optim import lr_at
from gts_megatron.contracts.plan import Plan


def arm_plan(arm: str, plan: Plan, num_layers: int, cfg: ExperimentConfig) -> Optional[Plan]:
    """The plan arm ``arm`` expands the base with (None for the dense arm)."""
    inputs = {"arm": arm, "from_plan": cfg.plan}
    if arm == "dense":
        return None
    if arm == "gts":
        return plan
    if arm == "random":
        return random_plan(plan, cfg.seed)
    if arm == "per-language":
        langs = list(plan.languages)
        return Plan(languages=langs, language_to_group={lang: i for i, lang in enumerate(langs)},
                    group_to_expert=list(range(len(langs))), num_experts=len(langs),
                    moe_layers=sorted(plan.moe_layers), inputs=inputs)
    experts = cfg.upcycle_experts or max(2, plan.num_experts)
    return Plan(languages=list(plan.languages), language_to_group={lang: 0 for lang in plan.languages},
                group_to_expert=[0], num_experts=experts, moe_layers=list(range(num_layers)), inputs=inputs)


def random_plan(plan: Plan, seed: int) -> Plan:
    """The plan's layers and group sizes with languages assigned at random (seeded), drawn again
    while it equals the plan's own grouping (which would make no control)."""
    sizes = [len(g) for g in plan.groups()]
    own = sorted(sorted(g) for g in plan.groups())
    rng = random.Random(seed)
    for _ in range(100):
        langs = list(plan.languages)
        rng.shuffle(langs)
        groups, start = [], 0
        for size in sizes:
            groups.append(sorted(langs[start:start + size]))
            start += size
        if sorted(groups) != own or len(sizes) in (1, len(langs)):
            break
    mapping = {lang: g for g, members in enumerate(groups) for lang in members}
    return Plan(languages=list(plan.languages), language_to_group=mapping, group_to_expert=list(plan.group_to_expert),
                num_experts=plan.num_experts, moe_layers=sorted(plan.moe_layers),
                inputs={"arm": "random", "seed": seed})


def stages(arm: str, steps: int, learned_steps: int) -> list[tuple[str, int]]:
    """(stage, steps) in order: pretrain (dense continued training), group, learned."""
    if arm == "dense":
        return [("pretrain", steps)]
    if arm == "upcycle":
        return [("learned", steps)]
    first = steps - learned_steps
    return [("group", first)] + ([("learned", learned_steps)] if learned_steps else [])


def stage_config(base: RunConfig, arm: str, stage: str, plan_path: Optional[Path], init_from: Path,
                 learned_steps: int, base_samples: int) -> RunConfig:
    """The run config of one training stage of an arm. Every arm reads the mixture from where the
    base's pretraining stopped (``base_samples``), so all arms see the same new samples. A
    two-stage arm follows one learning-rate schedule over ``base.train.steps``: stage 1 stops
    part-way down it and stage 2 goes on from the rate stage 1 ended with and the samples after
    stage 1's (restarting at the peak rate would cost what it gained)."""
    raw = base.model_dump(mode="json")
    total = base.train.steps
    plan = dict(stages(arm, total, learned_steps))
    train = raw["train"]
    offset = base_samples + (plan["group"] * base.train.global_batch_size if stage == "learned" and len(plan) == 2
                             else 0)
    train.update(steps=plan[stage], init_from=str(init_from), data_offset=offset)
    if len(plan) == 2 and stage == "group":
        train.update(lr_decay_steps=base.train.lr_decay_steps or total)
    elif len(plan) == 2 and stage == "learned":
        first = plan["group"]
        # a short warm-up all the same: the optimizer state starts afresh, and Adam's first
        # steps at full rate move every weight by about the rate (measured: it costs stage 2)
        train.update(lr=lr_at(base.train, first), warmup_steps=min(base.train.warmup_steps, plan[stage] // 4),
                     lr_decay_steps=max(1, (base.train.lr_decay_steps or total) - first))
    raw["moe"].update(plan=str(plan_path) if plan_path else None, stage="learned" if stage == "learned" else "group")
    if arm == "upcycle":  # no groups to hand over from: its copies start out equal anyway
        raw["moe"].update(handover=0.0)
    return RunConfig.model_validate(raw)
