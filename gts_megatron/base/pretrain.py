"""`gts pretrain`: train a dense Llama-style base model from scratch on a token dataset."""
from __future__ import annotations

from pathlib import Path

from gts_megatron.config import RunConfig
from gts_megatron.contracts.checkpoint import CheckpointRecord, TokenizerRecord
from gts_megatron.data.dataset import build_dataset
from gts_megatron.engine.loop import TrainResult
from gts_megatron.engine.trainer import TrainSpec, train
from gts_megatron.engine.session import training_session
from gts_megatron.model.llama import build_model, transformer_config
from gts_megatron.model.sizes import count_parameters


def pretrain(cfg: RunConfig, run_dir: Path) -> TrainResult:
    """Pretrain (or resume pretraining) a dense base model into ``run_dir``. Collective."""
    with training_session(cfg, run_dir, f"dense model: {count_parameters(cfg.model) / 1e6:.2f}M parameters") as runtime:
        config = transformer_config(cfg.model, cfg.parallel)
        model = build_model(cfg.model, config)
        dataset = build_dataset(cfg, run_dir)
        return train(cfg, run_dir, runtime, TrainSpec(model, config, dataset, desc="pretrain", record=CheckpointRecord(
            stage="pretrain", tokenizer=TokenizerRecord.of_dataset(dataset))))
