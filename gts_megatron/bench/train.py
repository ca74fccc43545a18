"""`gts bench train`: step time of the GtS model (group routing, top-1) against the dense model
it was expanded from, at equal active parameters, in the same process and on the same data.

Both models live in one process and take turns step by step (alternating which goes first), so
drift in a shared machine's speed hits both; the figure is the ratio of median step times after
warm-up. A step is forward, backward and the optimizer update (which GtS pays on all of its
parameters, active or not).
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

from gts_megatron.bench import machine
from gts_megatron.config import SyntheticDataConfig, build_config
from gts_megatron.data.families import write_synthetic
from gts_megatron.model.gts import moe_parameter_counts
from gts_megatron.model.llama import count_parameters
from gts_megatron.plan.plan_file import Plan, write_plan


def _quiet(*_args) -> None:
    pass


class _Trainer:
    """One model with its optimizer and data, stepped by hand so two can alternate step by step."""

    def __init__(self, cfg, run_dir: Path, runtime, plan: Optional[Plan]):
        from gts_megatron.base.pretrain import build_dataset
        from gts_megatron.engine.loop import lm_forward_step, wrap_ddp
        from gts_megatron.engine.optim import build_optimizer
        from gts_megatron.model.llama import build_model, transformer_config
        from gts_megatron.train import build_gts_model, gts_forward_step

        if plan is None:
            config = transformer_config(cfg.model, cfg.parallel)
            model, self.forward_step = build_model(cfg.model, config), lm_forward_step
        else:
            (model, config), self.forward_step = build_gts_model(cfg, plan), gts_forward_step
        self.dataset = build_dataset(cfg, run_dir, plan.language_to_group if plan else None)
        self.model = wrap_ddp(model, config, False)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.train, cfg.model, cfg.parallel)
        self.cfg, self.runtime, self.samples = cfg, runtime, 0

    def step(self) -> float:
        """One optimizer step (forward, backward, update); returns its wall time in seconds."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from gts_megatron.engine.loop import micro_batches

        t = self.cfg.train
        data = micro_batches(self.dataset, range(self.samples, self.samples + t.global_batch_size),
                             t.micro_batch_size, self.runtime.device)
        started = time.perf_counter()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        get_forward_backward_func()(
            forward_step_func=lambda it, m: self.forward_step(next(it), m), data_iterator=data,
            model=[self.model], num_microbatches=t.global_batch_size // t.micro_batch_size,
            seq_length=t.seq_length, micro_batch_size=t.micro_batch_size, forward_only=False)
        self.optimizer.step()
        self.scheduler.step(increment=1)
        self.samples += t.global_batch_size
        return time.perf_counter() - started


def bench_train(preset: str = "small", experts: int = 4, steps: int = 30, warmup: int = 5,
                dispatcher: str = "group", micro_batch_size: int = 8, seq_length: int = 256,
                work_dir: Optional[Path] = None) -> dict:
    """Median step time of dense and GtS training (every other layer MoE, group routing), stepped
    alternately in one process, and their ratio."""
    from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        root = Path(tmp)
        train = {"steps": steps + warmup, "micro_batch_size": micro_batch_size,
                 "global_batch_size": 2 * micro_batch_size, "seq_length": seq_length}
        base = build_config({"model": preset, "train": train}, "gts bench train")
        spec = SyntheticDataConfig(languages=2 * experts, families=experts, vocab_size=base.model.vocab_size,
                                   documents=40, document_tokens=256)
        manifest = write_synthetic(spec, root / "data", log=_quiet)
        groups = sorted(set(manifest.families.values()))
        plan = Plan(languages=manifest.languages, num_experts=experts, group_to_expert=list(range(experts)),
                    language_to_group={lang: groups.index(f) for lang, f in manifest.families.items()},
                    moe_layers=list(range(1, base.model.num_layers, 2)))
        write_plan(root / "plan.json", plan)
        raw = {"model": preset, "train": train, "data": {"kind": "indexed", "path": str(root / "data")}}
        dense_cfg = build_config(raw, "gts bench train")
        gts_cfg = build_config({**raw, "moe": {"plan": str(root / "plan.json"), "stage": "group",
                                               "dispatcher": dispatcher}}, "gts bench train")
        runtime = init_runtime(dense_cfg.parallel, dense_cfg.train.seed)
        try:
            dense, gts = _Trainer(dense_cfg, root / "dense", runtime, None), _Trainer(gts_cfg, root / "gts", runtime, plan)
            times = {"dense": [], "gts": []}
            for step in range(warmup + steps):
                for name, trainer in (("dense", dense), ("gts", gts)) if step % 2 else (("gts", gts), ("dense", dense)):
                    elapsed = trainer.step()
                    if step >= warmup:
                        times[name].append(elapsed)
        finally:
            shutdown_runtime()
    total, active = moe_parameter_counts(base.model, plan, topk=1)
    dense_s, gts_s = statistics.median(times["dense"]), statistics.median(times["gts"])
    return {"benchmark": "train", "preset": preset, "experts": experts, "moe_layers": plan.moe_layers,
            "dispatcher": dispatcher, "dense_parameters": count_parameters(base.model), "gts_parameters": total,
            "gts_active_parameters": active, "tokens_per_step": 2 * micro_batch_size * seq_length, "steps_measured": steps,
            "dense_step_s": round(dense_s, 4), "gts_step_s": round(gts_s, 4), "ratio": round(gts_s / dense_s, 3),
            **machine()}


def report(result: dict) -> str:
    """A readable summary of :func:`bench_train`'s result, then the result as JSON."""
    return "\n".join([
        f"GtS ({result['experts']} experts in layers {result['moe_layers']}, {result['dispatcher']} dispatcher, "
        f"{result['gts_parameters'] / 1e6:.2f}M parameters, {result['gts_active_parameters'] / 1e6:.2f}M active) "
        f"vs dense ({result['dense_parameters'] / 1e6:.2f}M), {result['tokens_per_step']} tokens per step, "
        f"{result['cores']} cores:",
        f"  median step {result['gts_step_s'] * 1000:.0f} ms vs {result['dense_step_s'] * 1000:.0f} ms: "
        f"{result['ratio']:.3f}x (goal <= 1.10x on CPU with EP=1)",
        json.dumps(result)])
