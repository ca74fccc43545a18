"""The arms of the comparison: the plan each MoE arm is expanded with (how each trains:
:mod:`gts_megatron.contracts.training`).

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
from typing import Optional

from gts_megatron.config import ExperimentConfig
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
