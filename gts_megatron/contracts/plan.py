"""plan.json: which languages form which group, which expert serves each group, which layers
become MoE layers. Written by `gts plan`, read by `gts expand` and `gts train`.

Example::

    {"format": "gts-plan/1", "languages": ["de", "en", "fr", "ru"],
     "language_to_group": {"de": 0, "en": 0, "fr": 1, "ru": 1},
     "group_to_expert": [0, 1], "num_experts": 2, "moe_layers": [0, 3]}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gts_megatron.artifacts import atomic_write_text, file_sha256, read_json
from gts_megatron.errors import GtsError

FORMAT = "gts-plan/1"
ROUTING_CHECKSUM = "routing_sha256"  # in ``inputs``: Plan.sha256() as `gts plan` wrote it


class Plan(BaseModel):
    """A validated GtS plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["gts-plan/1"] = FORMAT
    languages: list[str] = Field(min_length=1)
    language_to_group: dict[str, int]
    group_to_expert: list[int] = Field(min_length=1, description="expert index of group g at [g]")
    num_experts: int = Field(ge=1)
    moe_layers: list[int] = Field(min_length=1, description="0-based indices of the MoE layers")
    inputs: dict = {}  # what produced the plan (probe store, parameters, checksums)

    @model_validator(mode="after")
    def _consistent(self) -> "Plan":
        if sorted(self.language_to_group) != sorted(self.languages):
            raise ValueError("language_to_group must name exactly the plan's languages")
        groups = len(self.group_to_expert)
        bad = {lang: g for lang, g in self.language_to_group.items() if not 0 <= g < groups}
        if bad:
            raise ValueError(f"language_to_group {bad} names groups outside 0..{groups - 1}")
        if sorted(set(self.language_to_group.values())) != list(range(groups)):
            raise ValueError(f"every group 0..{groups - 1} needs at least one language")
        if any(not 0 <= e < self.num_experts for e in self.group_to_expert):
            raise ValueError(f"group_to_expert {self.group_to_expert} names experts outside 0..{self.num_experts - 1}")
        if len(set(self.group_to_expert)) != groups:
            raise ValueError(f"group_to_expert {self.group_to_expert} gives two groups the same expert")
        if len(set(self.moe_layers)) != len(self.moe_layers) or any(layer < 0 for layer in self.moe_layers):
            raise ValueError(f"moe_layers {self.moe_layers} must be distinct non-negative layer indices")
        return self

    @property
    def num_groups(self) -> int:
        return len(self.group_to_expert)

    def expert_of_language(self) -> dict[str, int]:
        """language -> the expert its tokens go to under group routing."""
        return {lang: self.group_to_expert[g] for lang, g in self.language_to_group.items()}

    def groups(self) -> list[list[str]]:
        """The languages of each group, in plan order."""
        return [[lang for lang in self.languages if self.language_to_group[lang] == g]
                for g in range(self.num_groups)]

    def check_model(self, num_layers: int, path: str = "plan") -> None:
        """Refuse MoE layers the model does not have."""
        outside = [layer for layer in self.moe_layers if layer >= num_layers]
        if outside:
            raise GtsError(f"{path}: moe_layers {outside} are outside the model's {num_layers} layers "
                           f"(0..{num_layers - 1})")

    def sha256(self) -> str:
        """Checksum of the routing-relevant content (what a checkpoint must agree with)."""
        key = {k: v for k, v in self.model_dump(mode="json").items() if k != "inputs"}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def load_plan(path: Path) -> Plan:
    """Read and validate a plan.json (a one-line GtsError naming the problem otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise GtsError(f"plan {path} does not exist; make one with `gts plan`")
    try:
        plan = Plan.model_validate(read_json(path))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"]))
        raise GtsError(f"{path}: {where + ': ' if where else ''}{error['msg'].removeprefix('Value error, ')}") from None
    recorded = plan.inputs.get(ROUTING_CHECKSUM)
    if recorded is not None and recorded != plan.sha256():
        raise GtsError(f"{path}: its groups, experts or MoE layers were changed after `gts plan` wrote it "
                       f"(inputs.{ROUTING_CHECKSUM} differs); run `gts plan` again, or delete inputs.{ROUTING_CHECKSUM} "
                       f"to use the edited plan as it is")
    return plan


def changed_inputs(plan: Plan) -> list[str]:
    """The input files recorded in ``plan.inputs`` (probe results, or a deviations file) that are
    still on this machine but whose bytes differ from when the plan was made: a plan made from
    probes that have been re-run since. Files no longer present are not counted."""
    source, checksums = plan.inputs.get("source"), plan.inputs.get("checksums") or {}
    if not source or not isinstance(checksums, dict):
        return []
    root = Path(source)
    changed = []
    for name, digest in checksums.items():
        path = Path(name) if Path(name).is_absolute() or root.is_file() else root / name
        if path.is_file() and file_sha256(path) != digest:
            changed.append(str(path))
    return changed


def write_plan(path: Path, plan: Plan) -> None:
    """Write ``plan`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan.model_dump(mode="json"), indent=1) + "\n")


def moe_identity(plan: Plan) -> dict:
    """What a checkpoint of the expanded model records about its plan, and must agree with."""
    return {"experts": plan.num_experts, "layers": sorted(plan.moe_layers), "groups": plan.num_groups,
            "language_to_expert": plan.expert_of_language()}
