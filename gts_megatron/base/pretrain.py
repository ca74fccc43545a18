"""`gts pretrain`: train a dense Llama-style base model from scratch on a token dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from gts_megatron.config import RunConfig
from gts_megatron.contracts.checkpoint import CheckpointRecord, TokenizerRecord
from gts_megatron.data.mixture import LanguageMixture
from gts_megatron.data.placement import Placement
from gts_megatron.data.synthetic import SyntheticTokens
from gts_megatron.engine.loop import TrainResult
from gts_megatron.engine.trainer import TrainSpec, train
from gts_megatron.engine.session import training_session
from gts_megatron.model.llama import build_model, transformer_config
from gts_megatron.model.sizes import count_parameters


def build_dataset(cfg: RunConfig, run_dir: Path, language_to_group: Optional[dict[str, int]] = None,
                  placement: Optional[Placement] = None):
    """The training dataset named by ``cfg.data`` (collective for indexed data); with a
    language -> group map every sample also carries its group id; with a placement it also
    holds each EP rank's sample stream (``dataset.placed``)."""
    if cfg.data.kind == "synthetic":
        return SyntheticTokens(cfg.model.vocab_size, cfg.train.seq_length, cfg.train.seed, cfg.data.successors)
    return LanguageMixture(Path(cfg.data.path), cfg.data.languages, cfg.data.alpha, cfg.train.seq_length,
                           cfg.train.seed, cfg.train.data_offset + cfg.train.steps * cfg.train.global_batch_size,
                           run_dir / "data_cache",
                           language_to_group=language_to_group, model_vocab_size=cfg.model.vocab_size,
                           placement=placement)


def pretrain(cfg: RunConfig, run_dir: Path) -> TrainResult:
    """Pretrain (or resume pretraining) a dense base model into ``run_dir``. Collective."""
    with training_session(cfg, run_dir, f"dense model: {count_parameters(cfg.model) / 1e6:.2f}M parameters") as runtime:
        config = transformer_config(cfg.model, cfg.parallel)
        model = build_model(cfg.model, config)
        dataset = build_dataset(cfg, run_dir)
        return train(cfg, run_dir, runtime, TrainSpec(model, config, dataset, desc="pretrain", record=CheckpointRecord(
            stage="pretrain", tokenizer=TokenizerRecord.of_dataset(dataset))))
