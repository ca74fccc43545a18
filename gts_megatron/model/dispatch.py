"""A megatron-core token dispatcher specialised to group routing (top-1, weight 1).

Megatron's alltoall dispatcher handles any top-k routing map: it sorts a [tokens, experts] mask
and copies rows with index_select. Under group routing each token has exactly one expert, so the
dispatch is a stable counting sort by expert (:func:`gts_megatron.ops.group_permute`), an
all-to-all over the EP ranks with the counts it returns, a second counting sort by local expert
when a rank holds several, and the inverse on the way back: the same tokens in the same order as
megatron's path, so the same loss.

Group-aware placement (``placement=True``): when the sampler gives each EP rank only samples of
the groups whose experts it holds, every token is already on its expert's rank and the
all-to-all is skipped (a token routed elsewhere is an error, never a silent drop). That holds in
training; in eval mode the layer takes the general path, since validation reads every language
on every rank.
"""
from __future__ import annotations

import weakref
from types import SimpleNamespace
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import (all_to_all, gather_from_sequence_parallel_region,
                                           reduce_scatter_to_sequence_parallel_region)
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.moe.token_dispatcher import MoETokenDispatcher

from gts_megatron import ops
from gts_megatron.errors import GtsError


class GroupTokenDispatcher(MoETokenDispatcher):
    """Dispatch for top-1 routing with the group_permute kernels (megatron's dispatcher API)."""

    def __init__(self, num_local_experts: int, local_expert_indices: list[int], config,
                 pg_collection=None, placement: bool = False, layer: Optional[MoELayer] = None):
        super().__init__(config=config, pg_collection=pg_collection)
        self.num_experts = config.num_moe_experts
        self.num_local_experts = num_local_experts
        self.first_local = local_expert_indices[0]
        self.placement = placement
        self._layer = weakref.ref(layer) if layer is not None else None  # its train/eval mode
        self.placed = placement
        self.ep_rank = dist.get_rank(self.ep_group) if self.ep_size > 1 else 0

    def dispatch_preprocess(self, hidden_states: torch.Tensor, routing_map: torch.Tensor, probs: torch.Tensor):
        """Rows ordered by expert, their routing weights in the same order; counts per EP rank."""
        self.hidden_shape = hidden_states.shape
        self.placed = self.placement and (self._layer is None or self._layer().training)
        hidden = hidden_states.view(-1, hidden_states.shape[-1])
        experts = routing_map.to(torch.int8).argmax(-1)  # top-1: the one True per row
        # the weight goes through the graph even though it is 1: the router loss rides on it
        token_probs = probs.gather(1, experts[:, None]).squeeze(1)
        permuted, counts, self.row_map = ops.group_permute(hidden, experts, self.num_experts)
        permuted_probs = token_probs.new_empty(token_probs.shape).scatter(0, self.row_map, token_probs)
        counts = counts.tolist()  # host copy: split sizes and the experts' token counts need it
        local = slice(self.first_local, self.first_local + self.num_local_experts)
        if self.placed:
            self._check_local(counts, local)
        if self.ep_size > 1 and not self.placed:
            per_rank = [sum(counts[r * self.num_local_experts:(r + 1) * self.num_local_experts])
                        for r in range(self.ep_size)]
            self.input_splits = per_rank
        # tokens each (TP, EP) source sends to each local expert: [tp][ep][local]
        gathered = self._gather_counts(counts)
        self.source_counts = [[row[local] for row in ep_rows] for ep_rows in gathered]
        self.output_splits = [sum(row) for row in self.source_counts[self.tp_rank]]
        self.output_splits_tp = [sum(sum(row) for row in ep_rows) for ep_rows in self.source_counts]
        return permuted, permuted_probs

    def _gather_counts(self, counts: list[int]) -> list[list[list[int]]]:
        """Every (TP, EP) rank's per-expert counts, as [tp][ep][expert] (one small all-gather)."""
        ep = 1 if self.placed else self.ep_size
        if ep == 1 and self.tp_size == 1:
            return [[counts]]
        group = self.tp_group if ep == 1 else self.tp_ep_group
        mine = torch.tensor(counts, dtype=torch.long)
        if dist.get_backend(group) == "nccl":
            mine = mine.cuda()
        everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(everyone, mine, group=group)
        rows = [t.tolist() for t in everyone]  # tp_ep group order: ep-major, tp-minor
        return [[rows[e * self.tp_size + t] for e in range(ep)] for t in range(self.tp_size)]

    def _check_local(self, counts: list[int], local: slice) -> None:
        foreign = {e: c for e, c in enumerate(counts) if c and not local.start <= e < local.stop}
        if foreign:
            raise GtsError(
                f"group-aware placement: EP rank {self.ep_rank} holds experts {local.start}..{local.stop - 1} "
                f"but its micro-batch sends tokens to experts {sorted(foreign)}; the sampler must give each "
                f"EP rank only the groups whose experts it holds (or set moe.placement false)")

    def token_dispatch(self, hidden_states: torch.Tensor, probs: torch.Tensor):
        """The EP all-to-all with the counts known from the sort (none under placement)."""
        if self.ep_size == 1 or self.placed:
            return hidden_states, probs
        return (all_to_all(self.ep_group, hidden_states, self.output_splits, self.input_splits),
                all_to_all(self.ep_group, probs, self.output_splits, self.input_splits))

    def dispatch_postprocess(self, hidden_states: torch.Tensor, probs: torch.Tensor):
        """Gather over expert-TP, then order the rows by local expert (a second counting sort)."""
        if self.tp_size > 1:
            hidden_states = gather_from_sequence_parallel_region(
                hidden_states, group=self.tp_group, output_split_sizes=self.output_splits_tp)
            probs = gather_from_sequence_parallel_region(
                probs, group=self.tp_group, output_split_sizes=self.output_splits_tp)
        chunks = torch.tensor([c for ep_rows in self.source_counts for row in ep_rows for c in row])  # [tp][ep][local]
        tokens_per_expert = chunks.view(-1, self.num_local_experts).sum(0)
        self.local_row_map = None
        if self.num_local_experts > 1:
            device = hidden_states.device
            local_ids = torch.arange(self.num_local_experts, device=device).repeat(chunks.numel() // self.num_local_experts)
            local_ids = local_ids.repeat_interleave(chunks.to(device))
            hidden_states, _, self.local_row_map = ops.group_permute(hidden_states, local_ids, self.num_local_experts)
            probs = probs.new_empty(probs.shape).scatter(0, self.local_row_map, probs)
        return hidden_states, tokens_per_expert, probs

    def combine_preprocess(self, hidden_states: torch.Tensor):
        """Back to source order, then reduce-scatter over expert-TP."""
        if self.local_row_map is not None:
            hidden_states = ops.group_unpermute(hidden_states, self.local_row_map)
        if self.tp_size > 1:
            hidden_states = reduce_scatter_to_sequence_parallel_region(
                hidden_states, group=self.tp_group, input_split_sizes=self.output_splits_tp)
        return hidden_states

    def token_combine(self, hidden_states: torch.Tensor):
        """The inverse EP all-to-all."""
        if self.ep_size == 1 or self.placed:
            return hidden_states
        return all_to_all(self.ep_group, hidden_states, self.input_splits, self.output_splits)

    def combine_postprocess(self, hidden_states: torch.Tensor):
        """Rows back in token order and the layer's input shape."""
        return ops.group_unpermute(hidden_states, self.row_map).view(self.hidden_shape)


def use_group_dispatcher(model: torch.nn.Module, placement: bool = False) -> int:
    """Give every MoELayer of ``model`` a :class:`GroupTokenDispatcher` on the process groups of
    the dispatcher megatron built for it (parameters and checkpoints are unchanged). Returns how
    many layers it changed."""
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    for layer in layers:
        built = layer.token_dispatcher
        groups = SimpleNamespace(ep=built.ep_group, expt_tp=built.tp_group, tp_ep=built.tp_ep_group)
        layer.token_dispatcher = GroupTokenDispatcher(layer.num_local_experts, layer.local_expert_indices,
                                                      layer.config, pg_collection=groups, placement=placement,
                                                      layer=layer)
    return len(layers)
