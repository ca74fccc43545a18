"""meta.json: what a checkpoint holds and how it was made. One writer (:func:`write_meta`) and one
reader (:func:`read_meta`); every stage that saves or opens a checkpoint goes through them.

Version 1 is the only one: a meta.json without a version is a version-1 file written before the
field existed (it has no file checksums, which are then not verified). A newer version is refused
rather than half understood.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gts_megatron.artifacts import atomic_write_text, files_sha256, read_json
from gts_megatron.config import ModelConfig
from gts_megatron.contracts.plan import Plan
from gts_megatron.errors import GtsError

META_FILE = "meta.json"
LATEST_FILE = "latest"  # in a checkpoints folder: the name of the newest complete checkpoint
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                "ffn_hidden_size", "vocab_size", "tie_embeddings", "qkv_bias")
VERSION = 1

Stage = Literal["pretrain", "import", "expand", "group", "learned"]


class TokenizerRecord(BaseModel):
    """The identity of the tokens a model trained on; evaluation refuses data tokenized otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    sha256: Optional[str] = None
    vocab_size: int
    eod: Optional[int] = None
    file: Optional[str] = None  # an imported model's tokenizer file, in the checkpoint's hf/ folder

    @classmethod
    def of_dataset(cls, dataset) -> Optional["TokenizerRecord"]:
        """The tokenizer of a training dataset's manifest; None for synthetic tokens."""
        manifest = getattr(dataset, "manifest", None)
        if manifest is None:
            return None
        t = manifest.tokenizer
        return cls(kind=t.kind, sha256=t.sha256, vocab_size=t.vocab_size, eod=t.eod)


class CheckpointRecord(BaseModel):
    """How the model in a checkpoint was made: what a stage hands to the checkpoints it saves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: Stage = "pretrain"
    topk: int = Field(1, ge=1, description="experts per token the model trained with (learned routing)")
    plan: Optional[Plan] = None  # an MoE model's plan: evaluation and export rebuild the model from it
    tokenizer: Optional[TokenizerRecord] = None  # None: synthetic tokens, no tokenizer
    hf: Optional[dict] = None  # an imported model's Hugging Face architecture and source


class CheckpointMeta(CheckpointRecord):
    """A checkpoint's meta.json, validated."""

    version: int = VERSION
    step: int = Field(ge=0)
    world_size: int = Field(1, ge=1)
    tensor_parallel: int = Field(1, ge=1)
    expert_parallel: int = Field(1, ge=1)
    model: ModelConfig
    train_state: dict = {}
    moe: Optional[dict] = None  # an MoE model's experts and layers (contracts.plan.moe_identity)
    files: dict[str, str] = {}  # SHA-256 of every file of the dist-checkpoint, by relative path


def _data_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != META_FILE)


def file_checksums(path: Path) -> dict[str, str]:
    """SHA-256 of every file of checkpoint ``path`` but meta.json."""
    files = _data_files(path)
    return {p.relative_to(path).as_posix(): digest for p, digest in zip(files, files_sha256(files))}


def write_meta(path: Path, meta: CheckpointMeta) -> None:
    """Write ``path``/meta.json atomically."""
    atomic_write_text(path / META_FILE, meta.model_dump_json(indent=2, exclude_none=False) + "\n")


def read_meta(path: Path) -> CheckpointMeta:
    """The validated meta.json of checkpoint ``path``, or a one-line GtsError saying what is wrong."""
    meta_file = path / META_FILE
    if not path.exists():
        raise GtsError(f"checkpoint {path} does not exist")
    if not meta_file.is_file():
        raise GtsError(f"{path} is not a complete gts checkpoint (no {META_FILE}); "
                       f"pass a directory like <run>/checkpoints/iter_0000010")
    raw = read_json(meta_file)
    version = raw.get("version", VERSION) if isinstance(raw, dict) else None
    if version != VERSION:
        raise GtsError(f"{meta_file}: version {version!r} is not one this gts reads (version {VERSION}); "
                       f"use the gts that wrote it, or a newer one")
    try:
        return CheckpointMeta.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"]))
        raise GtsError(f"{meta_file}: {where}: {error['msg']}") from None


def verify_files(path: Path, meta: CheckpointMeta) -> None:
    """Refuse a checkpoint whose files differ from the checksums its meta.json recorded at save
    (flipped bytes, a truncated or missing shard). Checkpoints from before checksums pass."""
    if not meta.files:
        return
    for name in meta.files:
        if not (path / name).is_file():
            raise GtsError(f"checkpoint {path}: {name} is missing; restore it or use another checkpoint")
    found = files_sha256([path / name for name in meta.files])
    for (name, digest), actual in zip(meta.files.items(), found):
        if actual != digest:
            raise GtsError(f"checkpoint {path}: {name} does not match the checksum recorded when it was saved "
                           f"(the file is corrupt); restore it or use another checkpoint")


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """The complete checkpoints under ``ckpt_root`` (those with a meta.json), oldest first."""
    return sorted(p for p in ckpt_root.glob("iter_*") if (p / META_FILE).is_file())


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    """The checkpoint ``latest`` names, or the newest complete one when ``latest`` is missing (a
    deleted pointer never sends a run back to step 0 over its checkpoints); None when there is none."""
    pointer = ckpt_root / LATEST_FILE
    if not pointer.is_file():
        complete = complete_checkpoints(ckpt_root)
        return complete[-1] if complete else None
    path = ckpt_root / pointer.read_text().strip()
    if not (path / META_FILE).is_file():
        raise GtsError(f"{pointer} names {path.name}, which is missing or incomplete; "
                       f"point it at a complete checkpoint or remove it to start afresh")
    return path


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or the newest checkpoint of a directory with a ``latest`` pointer."""
    if (path / LATEST_FILE).is_file():
        return latest_checkpoint(path)
    return path


def finished_checkpoint(run_dir: Path, steps: int) -> Optional[Path]:
    """The final checkpoint of a stage already trained for ``steps`` steps, else None."""
    ckpt = latest_checkpoint(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
    return ckpt if ckpt is not None and read_meta(ckpt).step >= steps else None


def check_model_matches(path: Path, meta: CheckpointMeta, model_config: ModelConfig,
                        moe: Optional[dict] = None) -> None:
    """Refuse a checkpoint whose parameter shapes differ from ``model_config`` (and, for an MoE
    model, whose experts or MoE layers differ from ``moe``)."""
    saved = meta.model.model_dump(mode="json")
    current = model_config.model_dump(mode="json")
    for field in SHAPE_FIELDS:
        if saved.get(field) != current[field]:
            raise GtsError(f"checkpoint {path} has model.{field}={saved.get(field)!r} but the config "
                           f"says {current[field]!r}; use the checkpoint's model config")
    saved_moe = meta.moe
    if moe is None and saved_moe is not None:
        raise GtsError(f"checkpoint {path} is an MoE model ({saved_moe['experts']} experts in layers "
                       f"{saved_moe['layers']}); set moe.plan to its plan")
    if moe is not None and saved_moe is None:
        raise GtsError(f"checkpoint {path} is a dense model; turn it into the planned MoE model with "
                       f"`gts expand` first")
    if moe is not None:
        for key in moe:
            if saved_moe.get(key) != moe[key]:
                raise GtsError(f"checkpoint {path} does not match the plan: it has {key} {saved_moe.get(key)} "
                               f"but the plan has {moe[key]}")
