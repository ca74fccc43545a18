"""The training dataset a run config names: the language mixture of a prepared data folder, or
synthetic tokens. Every stage that trains (pretraining, the probes, the GtS stages, the
benchmarks) builds its data here."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from gts_megatron.config import RunConfig
from gts_megatron.data.mixture import LanguageMixture
from gts_megatron.data.placement import Placement
from gts_megatron.data.synthetic import SyntheticTokens


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
