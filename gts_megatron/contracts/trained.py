"""A trained checkpoint, opened: what it is (dense or GtS, its plan, the routing it was trained
with, the tokenizer of its data), read from its meta.json without building the model. Evaluation,
export, adaptation and the comparison open checkpoints through it; engine.checkpoint's
:func:`~gts_megatron.engine.checkpoint.load_trained` builds the model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gts_megatron.config import ModelConfig, MoEConfig
from gts_megatron.contracts.checkpoint import LATEST_FILE, META_FILE, CheckpointMeta, read_meta, resolve_checkpoint
from gts_megatron.contracts.plan import Plan
from gts_megatron.data.manifest import Manifest
from gts_megatron.errors import GtsError


def find_checkpoint(path: Path) -> Path:
    """A checkpoint directory from a checkpoint, a checkpoints directory or a run directory."""
    if (path / "checkpoints" / LATEST_FILE).is_file():
        path = path / "checkpoints"
    return resolve_checkpoint(path)


@dataclass
class TrainedModel:
    """A checkpoint's description (before any model is built)."""

    path: Path
    meta: CheckpointMeta
    config: ModelConfig
    plan: Optional[Plan]  # None: a dense model
    stage: str            # pretrain, expand, group or learned

    @classmethod
    def open(cls, path: Path) -> "TrainedModel":
        """Read ``path``'s meta.json (a GtsError when it is missing or not a gts checkpoint)."""
        path = find_checkpoint(Path(path))
        meta = read_meta(path)
        plan = None
        if meta.moe is not None:
            if meta.plan is None:
                raise GtsError(f"checkpoint {path} is an MoE model that does not record its plan; "
                               f"continue its training for a step with this version to record it")
            plan = meta.plan
        return cls(path, meta, meta.model, plan, meta.stage)

    def identity(self) -> dict:
        """What tells this checkpoint from another at the same path (a retrained one)."""
        return {"path": str(self.path.resolve()), "step": self.step,
                "written_ns": (self.path / META_FILE).stat().st_mtime_ns}

    @property
    def step(self) -> int:
        return self.meta.step

    def routing(self, requested: str) -> Optional[str]:
        """The routing to evaluate with: None for a dense model; ``auto`` is the trained one."""
        if self.plan is None:
            if requested not in ("auto", None):
                raise GtsError(f"--routing {requested}: checkpoint {self.path} is a dense model without routers")
            return None
        if requested in ("auto", None):
            return "learned" if self.stage == "learned" else "group"
        return requested

    def topk(self, routing: Optional[str]) -> int:
        """Experts per token under ``routing`` (the trained top-k for learned routing)."""
        if routing != "learned":
            return 1
        trained = self.meta.topk if self.stage == "learned" else MoEConfig().topk
        return min(trained, self.plan.num_experts)

    def check_tokens(self, data_dir: Path, manifest: Manifest) -> None:
        """Refuse data tokenized otherwise than the model's training data."""
        mine, theirs = self.meta.tokenizer, manifest.tokenizer
        if mine is None:  # synthetic training tokens: only the vocabulary can be checked
            if theirs.vocab_size > self.config.vocab_size:
                raise GtsError(f"{data_dir} has {theirs.vocab_size} token ids; model {self.path} embeds "
                               f"{self.config.vocab_size}")
            return
        if mine.sha256 != theirs.sha256 or mine.vocab_size != theirs.vocab_size:
            raise GtsError(
                f"{data_dir} is tokenized with another tokenizer ({theirs.kind}, sha256 "
                f"{str(theirs.sha256)[:12]}..., vocab {theirs.vocab_size}) than model {self.path} was trained "
                f"on ({mine.kind}, sha256 {str(mine.sha256)[:12]}..., vocab {mine.vocab_size}); "
                f"prepare it with `gts data prepare --tokenizer <the model's tokenizer file>`")
