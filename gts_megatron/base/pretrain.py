"""`gts pretrain`: train a dense Llama-style base model from scratch on a token dataset."""
from __future__ import annotations

from pathlib import Path

from gts_megatron.config import RunConfig, dump_config
from gts_megatron.data.mixture import LanguageMixture, check_data
from gts_megatron.data.synthetic import SyntheticTokens
from gts_megatron.model.llama import build_model, count_parameters, transformer_config
from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime
from gts_megatron.artifacts import atomic_write_text
from gts_megatron.training.loop import TrainResult, train


def check_run_data(cfg: RunConfig) -> None:
    """Refuse data that cannot feed this run, before any process starts."""
    if cfg.data.kind == "indexed":
        check_data(Path(cfg.data.path), cfg.data.languages, cfg.train.seq_length, cfg.model.vocab_size)


def build_dataset(cfg: RunConfig, run_dir: Path):
    """The training dataset named by ``cfg.data`` (collective for indexed data)."""
    if cfg.data.kind == "synthetic":
        return SyntheticTokens(cfg.model.vocab_size, cfg.train.seq_length, cfg.train.seed, cfg.data.successors)
    check_run_data(cfg)
    return LanguageMixture(Path(cfg.data.path), cfg.data.languages, cfg.data.alpha, cfg.train.seq_length,
                           cfg.train.seed, cfg.train.steps * cfg.train.global_batch_size, run_dir / "data_cache")


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
        return train(cfg, run_dir, runtime, model, config, build_dataset(cfg, run_dir), desc="pretrain")
    finally:
        shutdown_runtime()
