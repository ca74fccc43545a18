"""Megatron dist-checkpoints of a training run: model, optimizer, scheduler, RNG, data position.

Layout of ``<run>/checkpoints/``::

    iter_0000010/     a megatron dist-checkpoint (loadable at any TP/EP layout) + meta.json
    latest            the name of the newest complete checkpoint

A checkpoint is written under a temporary name and renamed when every rank has finished, and
``latest`` is replaced atomically after that, so a crash mid-save leaves the previous checkpoint
in charge and never a half-written one.
"""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint import FileSystemReader
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.config import ModelConfig, MoEConfig, ParallelConfig
from gts_megatron.contracts.checkpoint import (LATEST_FILE, CheckpointMeta, CheckpointRecord, TokenizerRecord,
                                               check_model_matches, complete_checkpoints, file_checksums, read_meta,
                                               verify_files, write_meta)
from gts_megatron.contracts.plan import Plan, moe_identity
from gts_megatron.contracts.trained import TrainedModel
from gts_megatron.engine.optim import optimizer_parts
from gts_megatron.errors import GtsError
from gts_megatron.model.gts import build_moe_model
from gts_megatron.model.llama import build_model, transformer_config

# the training state of a checkpoint that starts a run (an expanded, imported or fresh model)
STEP_ZERO = MappingProxyType({"step": 0, "consumed_samples": 0})


@dataclass
class Checkpointable:
    """What a checkpoint saves and restores: a model built from ``config`` and, to resume training
    (not only its weights), the model's optimizer and LR schedule."""

    model: torch.nn.Module
    config: ModelConfig
    optimizer: Any = None
    scheduler: Any = None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside megatron's DDP and Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        # plain lists: the checkpoint loader accepts tensors and builtins only (weights_only)
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "tracker": get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(parts: Checkpointable, train_state: Optional[dict], with_rng: bool, is_loading: bool):
    model_sd = unwrap(parts.model).sharded_state_dict()
    state: dict[str, Any] = {"model": model_sd}
    if parts.optimizer is not None:
        # the distributed optimizer's default format (flattened ranges) cannot be written by the
        # torch_dist backend in megatron-core 0.16.1; "fully_reshardable" loads at any DP size
        state["optimizer"] = parts.optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    if parts.scheduler is not None:
        state["scheduler"] = parts.scheduler.state_dict()
    if train_state is not None:
        state["train_state"] = dict(train_state)
    if with_rng:  # one object per global rank: every rank has its own dropout streams
        rank, world = dist.get_rank(), dist.get_world_size()
        state["rng"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
    return state


def save_checkpoint(ckpt_root: Path, parts: Checkpointable, train_state: dict,
                    record: Optional[CheckpointRecord] = None, keep: int = 1) -> Path:
    """Save a checkpoint at ``train_state["step"]`` (collective: every rank calls it) and keep the
    newest ``keep``. Without an optimizer and scheduler it holds the model weights only. meta.json
    records ``record``, what evaluation needs to know about how the model was trained (stage,
    plan, tokenizer), the MoE layout of its plan, and every file's SHA-256."""
    step = train_state["step"]
    name = f"iter_{step:07d}"
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}"
    is_main = dist.get_rank() == 0
    if is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        for debris in ckpt_root.glob(".tmp-iter_*"):  # saves that were killed (saves never overlap)
            shutil.rmtree(debris, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    state = _sharded_state(parts, train_state, with_rng=True, is_loading=False)
    try:
        dist_checkpointing.save(state, str(tmp))
    except BaseException as exc:
        _reraise_interrupt(exc)  # Ctrl-C inside DCP: an interrupt, not a traceback
        raise
    dist.barrier()
    if is_main:
        record = record or CheckpointRecord()
        meta = CheckpointMeta(step=step, world_size=dist.get_world_size(),
                              tensor_parallel=parallel_state.get_tensor_model_parallel_world_size(),
                              expert_parallel=parallel_state.get_expert_model_parallel_world_size(),
                              model=parts.config, train_state=dict(train_state),
                              moe=moe_identity(record.plan) if record.plan else None,
                              files=file_checksums(tmp), **record.model_dump())
        write_meta(tmp, meta)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(ckpt_root / LATEST_FILE, name + "\n")
        _prune(ckpt_root, keep)
    dist.barrier()
    return final


def write_moe_checkpoint(out: Path, parts: Checkpointable, plan: Plan, tokenizer: Optional[TokenizerRecord]) -> Path:
    """Save a freshly built MoE model (by `gts expand` or `gts adapt`) as step 0 of ``out``: weights
    (and the optimizer's moments, when ``parts`` has an optimizer) with its plan, so that stage 1
    of training starts from it."""
    return save_checkpoint(out, parts, STEP_ZERO,
                           CheckpointRecord(stage="expand", topk=1, plan=plan, tokenizer=tokenizer))


def _prune(ckpt_root: Path, keep: int) -> None:
    for old in complete_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _is_distributed_optimizer(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return any(isinstance(o, DistributedOptimizer) for o in optimizer_parts(optimizer))


def _have_apex_or_te() -> bool:
    from megatron.core.optimizer import distrib_optimizer

    return bool(getattr(distrib_optimizer, "HAVE_APEX_OR_TE", False))


def has_optimizer_state(path: Path) -> bool:
    """Whether the checkpoint at ``path`` holds Adam's moments (a training run's checkpoints do; an
    expansion without them, an import from Hugging Face or an exported model does not)."""
    keys = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return any(key.startswith("optimizer.state.") for key in keys)


def load_checkpoint(path: Path, parts: Checkpointable, plan: Optional[Plan] = None, resume: bool = True) -> dict:
    """Load ``path`` into the model (and optimizer, scheduler, RNG when ``parts`` has an
    optimizer). Collective. An MoE model's checkpoint must match ``plan``'s experts and layers.
    With ``resume=False`` an optimizer takes the checkpoint's moments only: the step count,
    schedule and RNG of the new run start afresh, and its hyperparameters stay its own.

    Returns the saved training state ({"step", "consumed_samples", ...}). With only a model it is
    a weights-only load that works at any parallel layout; the RNG state is restored only when the
    world size is the one it was saved with.
    """
    meta = read_meta(path)
    check_model_matches(path, meta, parts.config, moe_identity(plan) if plan else None)
    _verify_on_rank0(path, meta)
    full = parts.optimizer is not None
    if full and _is_distributed_optimizer(parts.optimizer) and not _have_apex_or_te():
        instead = (f"start a new run with train.init_from={path} (weights only) instead" if resume else
                   "set train.init_optimizer=false (weights only) or parallel.distributed_optimizer=false")
        what = f"resuming {path}" if resume else f"train.init_optimizer from {path}"
        raise GtsError(f"{what} needs apex or TransformerEngine: megatron-core 0.16.1 cannot reload its "
                       f"distributed optimizer's state without them; {instead}")
    if full and not resume and not has_optimizer_state(path):
        raise GtsError(f"train.init_optimizer: checkpoint {path} holds weights only, no optimizer state "
                       f"(`gts expand` keeps the base's with --optimizer-state); set train.init_optimizer=false")
    with_rng = full and resume and meta.world_size == dist.get_world_size()
    train_state = meta.train_state if full and resume else None
    request = _sharded_state(parts, train_state, with_rng, is_loading=True)
    try:
        loaded = dist_checkpointing.load(request, str(path))
    except BaseException as exc:  # torch DCP's CheckpointException is a BaseException
        _reraise_interrupt(exc)
        cause = _first_failure(exc)
        detail = (str(cause).strip().splitlines() or [""])[0][:200]
        raise GtsError(f"checkpoint {path} is unreadable or incomplete ({type(cause).__name__}"
                       f"{': ' + detail if detail else ''}); restore it or delete it to start over") from None
    result = unwrap(parts.model).load_state_dict(loaded["model"], strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing:
        raise GtsError(f"checkpoint {path} lacks {len(missing)} model tensors, e.g. {missing[0]}")
    _refuse_non_finite(path, parts.model)
    if full and not resume:
        _load_moments_only(parts.optimizer, loaded["optimizer"])
        return dict(meta.train_state)
    if full:
        parts.optimizer.load_state_dict(loaded["optimizer"])
        if parts.scheduler is not None:
            parts.scheduler.load_state_dict(loaded["scheduler"])
        if with_rng:
            _set_rng_state(loaded["rng"])
        return dict(loaded["train_state"])
    return dict(meta.train_state)


def _load_moments_only(optimizer, state: dict) -> None:
    """Adam's moments and step from ``state``; the optimizer's own hyperparameters (betas, eps,
    weight decay, as this run configures them) are put back over the checkpoint's."""
    parts = optimizer_parts(optimizer)
    own = [[{k: v for k, v in group.items() if k != "params"} for group in part.optimizer.param_groups]
           for part in parts]
    optimizer.load_state_dict(state)
    for part, groups in zip(parts, own):
        for group, settings in zip(part.optimizer.param_groups, groups):
            group.update(settings)


def load_trained(trained: TrainedModel, routing: Optional[str]) -> torch.nn.Module:
    """``trained``'s model with its weights, on this (single) process, in eval mode; an MoE model
    routes by ``routing`` (group or learned, see :meth:`TrainedModel.routing`)."""
    parallel = ParallelConfig()
    if trained.plan is None:
        model = build_model(trained.config, transformer_config(trained.config, parallel))
    else:
        moe = MoEConfig(plan=str(trained.path), stage=routing, topk=trained.topk(routing))
        model, _ = build_moe_model(trained.config, parallel, moe, trained.plan)
    load_checkpoint(trained.path, Checkpointable(model, trained.config), trained.plan)
    model.eval()
    return model


def _first_failure(exc: BaseException) -> BaseException:
    """The first per-rank error inside torch DCP's CheckpointException (values: an exception, or
    an (exception, traceback) pair), else ``exc`` itself."""
    failure = next(iter((getattr(exc, "failures", None) or {}).values()), exc)
    return failure[0] if isinstance(failure, tuple) and failure else failure


def _reraise_interrupt(exc: BaseException) -> None:
    """DCP catches every BaseException of a rank and re-raises it wrapped: a Ctrl-C that lands
    inside a checkpoint load or save must still reach the command as KeyboardInterrupt (exit 130)."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
    if isinstance(_first_failure(exc), KeyboardInterrupt):
        raise KeyboardInterrupt from None


def _verify_on_rank0(path: Path, meta: CheckpointMeta) -> None:
    """Checksums, read once (on rank 0) and the verdict shared, so every rank refuses together."""
    error = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            verify_files(path, meta)
        except GtsError as exc:
            error = str(exc)
    if dist.is_initialized() and dist.get_world_size() > 1:
        shared = [error]
        dist.broadcast_object_list(shared, src=0)
        error = shared[0]
    if error:
        raise GtsError(error)


def _refuse_non_finite(path: Path, model) -> None:
    """A NaN or infinite weight is never trained on or evaluated: name the first such tensor."""
    for name, param in unwrap(model).named_parameters():
        if not torch.isfinite(param.detach()).all():
            raise GtsError(f"checkpoint {path}: weight {name} holds NaN or infinite values; "
                           f"use an earlier checkpoint")
