"""Group-aware placement: which training samples each expert-parallel rank reads.

Without placement every data-parallel rank reads a contiguous slice of each global batch, so its
tokens go to experts on every EP rank and the MoE layers need an all-to-all. With placement, EP
rank ``e`` reads only samples whose language's group has its expert on ``e``: its own stream, the
blended sample order filtered to those languages, in order. Each global batch takes the same
number of samples, ``global_batch_size / EP``, from every stream, so the per-language mixture
holds within each EP rank's languages while each EP rank's share of the batch is 1/EP (that is
the price of skipping the all-to-all). The position in every stream follows from the step alone,
so runs resume exactly and every rank of one EP rank's data-parallel group reads a disjoint part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gts_megatron.errors import GtsError


@dataclass(frozen=True)
class Placement:
    """Where each language's expert lives: the plan's language -> expert map over EP ranks."""

    language_to_expert: dict[str, int]
    num_experts: int
    ep_size: int

    def owners(self, languages: Sequence[str]) -> list[int]:
        """The EP rank holding each language's expert, refused if an EP rank would get no
        language (it would have nothing to train on)."""
        missing = [lang for lang in languages if lang not in self.language_to_expert]
        if missing:
            raise GtsError(f"the language -> group map has no group for {', '.join(missing)}")
        per_rank = self.num_experts // self.ep_size
        owners = [self.language_to_expert[lang] // per_rank for lang in languages]
        idle = [r for r in range(self.ep_size) if r not in owners]
        if idle:
            r = idle[0]
            raise GtsError(f"moe.placement: EP rank {r} holds experts {r * per_rank}..{(r + 1) * per_rank - 1}, "
                           f"which no language of the data ({', '.join(languages)}) is routed to; choose "
                           f"parallel.expert so that every EP rank holds a language group, or set "
                           f"moe.placement false")
        return owners


def mixture_length(samples: int, weights: Sequence[float], owners: Sequence[int], ep_size: int) -> int:
    """How long the blended mixture must be for every EP rank's stream to hold its share of the
    first ``samples`` global samples, ``ceil(samples / EP)``: the rarest stream sets the length."""
    total = sum(weights)
    shares = [sum(w for w, o in zip(weights, owners) if o == r) / total for r in range(ep_size)]
    per_stream = math.ceil(samples / ep_size)
    # megatron's blending keeps every dataset within one sample of its weight's share
    return max(samples, max(math.ceil((per_stream + 2) / s) for s in shares))


class PlacedStreams:
    """Per-EP-rank streams of sample indices from a blended mixture's dataset index."""

    def __init__(self, dataset_index: np.ndarray, owners: Sequence[int], ep_size: int, needed: int):
        owner_of = np.asarray(owners, dtype=np.int64)[np.asarray(dataset_index, dtype=np.int64)]
        self.ep_size = ep_size
        self.streams = [np.flatnonzero(owner_of == r) for r in range(ep_size)]
        per_stream = math.ceil(needed / ep_size)
        short = [r for r, s in enumerate(self.streams) if len(s) < per_stream]
        if short:
            raise GtsError(f"moe.placement: EP rank {short[0]}'s languages have {len(self.streams[short[0]])} "
                           f"of the {per_stream} samples the run needs in a mixture of {len(dataset_index)}")

    def indices(self, first_sample: int, per_rank: int, ep_rank: int, edp_rank: int) -> list[int]:
        """Global sample indices for EP rank ``ep_rank``'s data-parallel rank ``edp_rank`` in the
        global batch that starts at sample ``first_sample``."""
        start = first_sample // self.ep_size + edp_rank * per_rank
        stream = self.streams[ep_rank]
        if start + per_rank > len(stream):
            raise GtsError(f"moe.placement: EP rank {ep_rank}'s stream has {len(stream)} samples; the batch "
                           f"needs up to {start + per_rank} (train.steps x train.global_batch_size)")
        return stream[start:start + per_rank].tolist()

    def order(self, ep_rank: int, edp_rank: int):
        """The training loop's sample order (``SampleOrder``) for one rank."""
        return lambda first_sample, per_rank: self.indices(first_sample, per_rank, ep_rank, edp_rank)
