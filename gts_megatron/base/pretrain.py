"""`gts pretrain`: train a dense Llama-style base model from scratch on a token dataset."""
from __future__ import annotations

from pathlib import Path

from gts_megatron.config import RunConfig, dump_config
from gts_megatron.data.synthetic import SyntheticTokens
from gts_megatron.model.llama import build_model, count_parameters, transformer_config
from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime
from gts_megatron.training.checkpoint import atomic_write_text
from gts_megatron.training.loop import TrainResult, train


def build_dataset(cfg: RunConfig):
    """The training token dataset named by ``cfg.data``."""
    return SyntheticTokens(cfg.model.vocab_size, cfg.train.seq_length, cfg.train.seed, cfg.data.successors)


def pretrain(cfg: RunConfig, run_dir: Path) -> TrainResult:
    """Pretrain (or resume pretraining) a dense base model into ``run_dir``. Collective."""
    runtime = init_runtime(cfg.parallel, cfg.train.seed)
    try:
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            print(f"dense model: {count_parameters(cfg.model) / 1e6:.2f}M parameters; "
                  f"world {runtime.env.world_size} = TP {runtime.tensor} x DP {runtime.data}", flush=True)
        config = transformer_config(cfg.model, cfg.parallel)
        model = build_model(cfg.model, config)
        return train(cfg, run_dir, runtime, model, config, build_dataset(cfg), desc="pretrain")
    finally:
        shutdown_runtime()
