"""The trainer every training stage shares, in named phases: build (DDP, optimizer, schedule),
restore (resume or initialise), step, evaluate, checkpoint, finish; :meth:`Trainer.run` is the
loop that calls them. A stage differs from another only in the :class:`TrainSpec` it plugs in:
its model, data, forward step, checkpoint record and a hook at the start of each step (the GtS
learned stage's router hand-over schedule, say)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.transformer_config import TransformerConfig

from gts_megatron.config import RunConfig
from gts_megatron.contracts.checkpoint import CheckpointRecord
from gts_megatron.contracts.checkpoint import LATEST_FILE, latest_checkpoint, resolve_checkpoint
from gts_megatron.engine import checkpoint as ckpt
from gts_megatron.engine.loop import (ForwardStep, SampleOrder, StopRequest, TrainResult, contiguous_order,
                                      lm_forward_step, log_validation, mean_reports, micro_batches, wrap_ddp)
from gts_megatron.engine.metrics import RunLog
from gts_megatron.engine.optim import build_optimizer
from gts_megatron.errors import GtsError
from gts_megatron.runtime.distributed import Runtime


@dataclass
class TrainSpec:
    """What a stage plugs into the trainer."""

    model: torch.nn.Module  # this rank's shard, not yet wrapped in DDP
    config: TransformerConfig
    dataset: object  # batch(indices, split) and eval_sets(samples), as data/ builds them
    forward_step: ForwardStep = lm_forward_step
    desc: str = "train"  # the progress display's label
    # into every checkpoint's meta.json (stage, plan, tokenizer); an MoE model's checkpoints must match its plan
    record: Optional[CheckpointRecord] = None
    save: bool = True  # False: nothing under checkpoints/ (probes keep only what they measure)
    order: Optional[SampleOrder] = None  # each rank's training samples; default contiguous_order
    on_step_start: Callable[[int], None] = field(default=lambda step: None)  # steps done so far
    # metrics of the forward passes since its last call, beside the loss (collective): the routers'
    step_metrics: Callable[[], dict[str, float]] = field(default=dict)


class Trainer:
    """One run of ``cfg.train.steps`` optimizer steps into ``run_dir``. Collective: every rank
    builds one with its own shard of the model."""

    def __init__(self, cfg: RunConfig, run_dir: Path, runtime: Runtime, spec: TrainSpec):
        self.cfg, self.t, self.runtime, self.spec = cfg, cfg.train, runtime, spec
        self.run_dir, self.ckpt_root = run_dir, run_dir / "checkpoints"
        self.per_rank = self.t.global_batch_size // cfg.data_parallel_size(runtime.env.world_size)
        self.order = spec.order or contiguous_order(parallel_state.get_data_parallel_rank())
        self.build()
        self.state = {"step": 0, "consumed_samples": self.t.data_offset}
        self.resumed_from: Optional[Path] = None
        self.last_saved: Optional[int] = None
        self.loss: Optional[float] = None
        self.log: Optional[RunLog] = None

    # -- build -------------------------------------------------------------------------------
    def build(self) -> None:
        """DDP around the model, the megatron optimizer and the LR schedule."""
        self.model = wrap_ddp(self.spec.model, self.spec.config, self.cfg.parallel.distributed_optimizer)
        self.optimizer, self.scheduler = build_optimizer(self.model, self.t, self.cfg.model, self.cfg.parallel)
        if self.spec.config.fp16 or self.spec.config.bf16:
            self.spec.config.grad_scale_func = self.optimizer.scale_loss

    # -- restore -----------------------------------------------------------------------------
    def restore(self) -> None:
        """Resume from the run's newest checkpoint, else start from ``train.init_from`` or the
        model as built; then open the run's log at the step it continues from."""
        self.resumed_from = latest_checkpoint(self.ckpt_root)
        if self.resumed_from is not None:
            self.state = ckpt.load_checkpoint(self.resumed_from, self._checkpointable(), self._plan())
            self.last_saved = self.state["step"]
        elif self.t.init_from:
            moments = self.optimizer if self.t.init_optimizer else None
            ckpt.load_checkpoint(resolve_checkpoint(Path(self.t.init_from)),
                                 ckpt.Checkpointable(self.model, self.cfg.model, moments), self._plan(), resume=False)
            if moments is None:
                self.optimizer.reload_model_params()  # fp32 master copies follow the loaded weights
        elif self.t.init_optimizer:
            raise GtsError("train.init_optimizer needs train.init_from, the checkpoint whose moments to start from")
        self.log = RunLog(self.run_dir, self.runtime.is_main, self.t, self.state["step"], self.spec.desc)
        if self.resumed_from is not None:
            if not (self.ckpt_root / LATEST_FILE).is_file():
                self.log.message(f"{self.ckpt_root / LATEST_FILE} is missing: recovered the newest complete "
                                 f"checkpoint, {self.resumed_from.name}")
            self.log.message(f"resumed from {self.resumed_from} at step {self.state['step']}")

    # -- step --------------------------------------------------------------------------------
    def step(self) -> None:
        """One optimizer step over a global batch (micro-batches accumulated), logged."""
        t, started = self.t, time.perf_counter()
        data = micro_batches(self.spec.dataset, self.order(self.state["consumed_samples"], self.per_rank),
                             t.micro_batch_size, self.runtime.device)
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        out = get_forward_backward_func()(
            forward_step_func=lambda it, m: self.spec.forward_step(next(it), m), data_iterator=data,
            model=[self.model], num_microbatches=self.per_rank // t.micro_batch_size, seq_length=t.seq_length,
            micro_batch_size=t.micro_batch_size, forward_only=False)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        self.state["step"] += 1
        self.state["consumed_samples"] += t.global_batch_size
        reported = {**mean_reports(out, self.runtime.device), **self.spec.step_metrics()}
        self.loss = reported["loss"]
        elapsed = time.perf_counter() - started
        if self.state["step"] % t.log_interval == 0 or self.state["step"] == t.steps:
            self.log.log(self.state["step"], {
                **reported, "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "lr": lr, "step_time_s": elapsed, "tokens_per_s": t.global_batch_size * t.seq_length / elapsed})

    # -- evaluate ----------------------------------------------------------------------------
    def evaluate(self) -> tuple[Optional[float], dict[str, dict]]:
        """Validation on every held-out set, logged: (mean loss, per-set results)."""
        self.spec.on_step_start(self.state["step"])
        results = self._validation_results()
        return log_validation(self.log, self.state["step"], results), results

    def _validation_results(self) -> dict[str, dict]:
        """Every reported metric (the loss, and the spec's step metrics: router loss and accuracy
        for GtS) on each of the dataset's validation sets (one per language for multilingual
        data), over at most ``train.eval_samples`` held-out sequences each. Collective."""
        results, t = {}, self.t
        self.model.eval()
        for name, split, samples in self.spec.dataset.eval_sets(t.eval_samples):
            per_rank = samples // self.runtime.data
            if per_rank == 0:
                continue
            mbs = min(t.micro_batch_size, per_rank)
            per_rank -= per_rank % mbs
            indices = contiguous_order(parallel_state.get_data_parallel_rank())(0, per_rank)
            data = micro_batches(self.spec.dataset, indices, mbs, self.runtime.device, split=split)
            with torch.no_grad():
                out = get_forward_backward_func()(
                    forward_step_func=lambda it, m: self.spec.forward_step(next(it), m), data_iterator=data,
                    model=[self.model], num_microbatches=per_rank // mbs, seq_length=t.seq_length,
                    micro_batch_size=mbs, forward_only=True)
            results[name] = {**mean_reports(out, self.runtime.device), **self.spec.step_metrics()}
        self.model.train()
        return results

    # -- checkpoint --------------------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Save the model, optimizer, schedule and training state at the current step."""
        path = ckpt.save_checkpoint(self.ckpt_root, self._checkpointable(), self.state, self.spec.record,
                                    self.t.keep_checkpoints)
        self.last_saved = self.state["step"]
        return path

    def _checkpointable(self) -> ckpt.Checkpointable:
        return ckpt.Checkpointable(self.model, self.cfg.model, self.optimizer, self.scheduler)

    def _plan(self):
        """An MoE model's plan: its checkpoints must match its experts and layers."""
        return self.spec.record.plan if self.spec.record else None

    def _checkpoint_due(self, interrupted: bool) -> bool:
        step = self.state["step"]
        due = self.t.save_interval and step % self.t.save_interval == 0
        return self.spec.save and bool(due or interrupted or step == self.t.steps)

    # -- finish ------------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """The final validation and how the run ended."""
        valid, results = self.evaluate()
        path = self.ckpt_root / f"iter_{self.last_saved:07d}" if self.last_saved else None
        losses = {name: r["loss"] for name, r in results.items()} or None
        return TrainResult(self.state["step"], self.loss, valid, losses, None, path)

    def _stopped(self, signum: int, path: Optional[Path]) -> TrainResult:
        self.log.message(f"stopped by signal {signum} at step {self.state['step']}" + (
            f"; checkpoint {path}; run the same command again to resume" if self.spec.save else ""))
        return TrainResult(self.state["step"], self.loss, None, None, signum, path if self.spec.save else None)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Restore, then step until ``train.steps``: checkpoint when due, validate every
        ``train.eval_interval`` steps, and stop cleanly (checkpoint saved) on SIGTERM/SIGINT."""
        stop = StopRequest()
        try:
            self.restore()
            if self.t.eval_interval and self.resumed_from is None and self.state["step"] < self.t.steps:
                self.evaluate()  # the untrained baseline
            path = None
            while self.state["step"] < self.t.steps:
                self.spec.on_step_start(self.state["step"])
                self.step()
                interrupted = stop.agreed(self.runtime.device)
                if self._checkpoint_due(interrupted):
                    path = self.checkpoint()
                if interrupted:
                    return self._stopped(stop.signum, path)
                step = self.state["step"]
                if self.t.eval_interval and step % self.t.eval_interval == 0 and step < self.t.steps:
                    self.evaluate()
            return self.finish()
        finally:
            stop.restore()
            if self.log is not None:
                self.log.close()


def train(cfg: RunConfig, run_dir: Path, runtime: Runtime, spec: TrainSpec) -> TrainResult:
    """Train ``spec.model`` for ``cfg.train.steps`` optimizer steps, resuming ``run_dir`` if it has
    a checkpoint. Collective: every rank calls it with its own shard of the model."""
    return Trainer(cfg, run_dir, runtime, spec).run()

