"""What every arm of `gts bench train` starts from, written once before any worker starts:
synthetic languages in planted families, a plan with one group per family, a dense initial
checkpoint, its GtS expansion (``gts expand``) and, for the DeepSpeed arms, that expansion
exported as a Hugging Face folder (``gts export-hf``). So all arms hold the same weights."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.bench import quiet
from gts_megatron.config import (ExpandConfig, ExportHfConfig, ParallelConfig, RunConfig, SyntheticDataConfig,
                                 build_config)
from gts_megatron.config.bench import DEEPSPEED_ARMS, BenchTrainConfig
from gts_megatron.contracts.plan import Plan, write_plan
from gts_megatron.data.families import write_synthetic

OPTIONS_FILE = "bench.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Workspace:
    """The paths of a prepared benchmark folder."""

    root: Path

    data = property(lambda self: self.root / "data")
    plan = property(lambda self: self.root / "plan.json")
    dense = property(lambda self: self.root / "dense")
    gts = property(lambda self: self.root / "gts")
    hf = property(lambda self: self.root / "hf")
    result = property(lambda self: self.root / RESULT_FILE)

    @functools.cache
    def options(self) -> BenchTrainConfig:
        """The validated options the workspace was prepared for (read once)."""
        return BenchTrainConfig.model_validate_json((self.root / OPTIONS_FILE).read_text())

    def run_config(self, arm: str, dtype: str = "fp32") -> RunConfig:
        """The run config of a megatron arm (dense, or GtS under its dispatcher), on this workspace.
        The checkpoints are written in fp32 (``dtype`` is not part of a checkpoint's shape)."""
        opts = self.options()
        raw = {"model": {"preset": opts.preset, "dtype": dtype},
               "train": {"steps": opts.warmup + opts.steps + opts.split_steps + 2,  # + 2 memory-profiled steps
                         "micro_batch_size": opts.micro_batch_size, "global_batch_size": opts.batch,
                         "seq_length": opts.seq_length, "seed": opts.seed},
               # one megatron parallel state serves every arm: experts split like the dense layers
               # (placement needs that; megatron-core's default before expert_tensor existed)
               # (the dense model has no experts to spread: megatron refuses EP without them)
               "parallel": {"tensor": opts.tensor, "pipeline": opts.pipeline, "pipeline_layers": opts.pipeline_layers,
                            "expert": 1 if arm == "dense" else opts.expert, "expert_tensor": opts.tensor},
               "data": {"kind": "indexed", "path": str(self.data)}}
        if arm != "dense":
            dispatcher = {"gts-alltoall": "alltoall"}.get(arm, "group")
            raw["moe"] = {"plan": str(self.plan), "stage": "group", "dispatcher": dispatcher,
                          "placement": arm == "gts-placement"}
        return build_config(raw, f"gts bench train ({arm})")



def prepare(opts: BenchTrainConfig, root: Path, log) -> Workspace:
    """Write the workspace for ``opts`` into the empty folder ``root``. Runs in one process."""
    from gts_megatron.engine.checkpoint import STEP_ZERO, Checkpointable, save_checkpoint
    from gts_megatron.expand import expand
    from gts_megatron.model.llama import build_model, transformer_config
    from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

    ws = Workspace(root)
    atomic_write_text(root / OPTIONS_FILE, opts.model_dump_json())
    model = ws.run_config("dense").model
    spec = SyntheticDataConfig(languages=2 * opts.experts, families=opts.experts, vocab_size=model.vocab_size,
                               documents=40, document_tokens=opts.seq_length + 1, seed=opts.seed)
    manifest = write_synthetic(spec, ws.data, log=quiet)
    families = sorted(set(manifest.families.values()))
    plan = Plan(languages=manifest.languages, num_experts=opts.experts, group_to_expert=list(range(opts.experts)),
                language_to_group={lang: families.index(f) for lang, f in manifest.families.items()},
                moe_layers=list(range(1, model.num_layers, opts.moe_every)))
    write_plan(ws.plan, plan)
    parallel = ParallelConfig()
    init_runtime(parallel, opts.seed)
    try:
        dense = build_model(model, transformer_config(model, parallel))
        save_checkpoint(ws.dense, Checkpointable(dense, model), STEP_ZERO)
    finally:
        shutdown_runtime()
    expand(ws.dense, ws.plan, ws.gts, ExpandConfig(seed=opts.seed), log=quiet)
    if any(arm in DEEPSPEED_ARMS for arm in opts.arm_names):
        from transformers.utils import logging as hf_logging

        from gts_megatron.hf.convert import export_hf

        hf_logging.disable_progress_bar()
        export_hf(ExportHfConfig(checkpoint=str(ws.gts), out=str(ws.hf)), log=quiet)  # checks itself against the megatron model
    log(f"prepared {len(manifest.languages)} languages in {opts.experts} families, a dense "
        f"{opts.preset} model and its GtS expansion ({opts.experts} experts in layers {plan.moe_layers})")
    return ws


def read_result(ws: Workspace) -> dict:
    """The result the workers wrote (only after every arm finished every step)."""
    return json.loads(ws.result.read_text())
