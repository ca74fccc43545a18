"""The GtS mixture-of-experts model: megatron-core MoE layers with one expert per language group.

Composition, not flags: the dense Llama layer spec, with the MLP of each planned layer replaced
by megatron's MoELayer, whose router is

- stage "group": :class:`GroupRouter`. Each token goes to its language group's expert with weight
  1 (top-1). The router still computes logits, trained toward the group's expert with a
  cross-entropy "router classification" loss (weight alpha), so stage 2 can start from it.
- stage "learned": megatron's own TopKRouter (softmax over the top-k logits, load-balancing
  loss), the same ``router.weight``, so a stage-1 checkpoint loads into it directly. While
  :attr:`RoutingContext.handover` is below 1 (the first steps of stage 2), :class:`HandoverRouter`
  blends group routing into it, so the stage starts from exactly the function stage 1 ended with.

Megatron's MoE layer only sees hidden states, so per-token group ids reach the routers through
:data:`ROUTING`, which the training step fills for every micro-batch (sequence parallel: each TP
rank takes its own chunk of the sequence).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler, get_moe_layer_wise_logging_tracker
from megatron.core.transformer.moe.router import Router, TopKRouter
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from gts_megatron.config import ModelConfig, MoEConfig, ParallelConfig
from gts_megatron.errors import GtsError
from gts_megatron.model.dispatch import use_group_dispatcher
from gts_megatron.model.llama import build_model, decoder_spec, transformer_config
from gts_megatron.contracts.plan import Plan


class RoutingContext:
    """Per-micro-batch side channel from the training step to the routers, and back (metrics)."""

    def __init__(self):
        self.group_ids: Optional[torch.Tensor] = None  # [batch, seq] group id of every token
        self._total: Optional[torch.Tensor] = None     # router calls since the last step_metrics:
        self._passes = 0                               # [ce sum, correct, tokens]; forward passes
        # stage 2's share of learned routing, 0 (group routing) .. 1 (learned alone); the training
        # loop sets it per step; None outside training (evaluation takes learned routing alone)
        self.handover: Optional[float] = None

    def begin(self, group_ids: Optional[torch.Tensor]) -> None:
        """Set the group ids of the next forward pass ([batch] per sample or [batch, seq])."""
        self.group_ids = group_ids
        self._passes += 1

    def token_group_ids(self, seq: int, batch: int, sequence_parallel: bool, tp_group) -> torch.Tensor:
        """Group ids of the tokens a router sees, in megatron's [seq, batch] order, flattened."""
        if self.group_ids is None:
            raise GtsError("a group-routed step got no group ids: stage 'group' needs data with languages "
                           "(data.kind indexed) and a plan whose groups cover them")
        ids = self.group_ids
        if ids.dim() == 1:
            ids = ids[:, None].expand(-1, seq * (tp_group.size() if sequence_parallel else 1))
        ids = ids.transpose(0, 1)  # [seq, batch]
        if sequence_parallel and ids.shape[0] != seq:  # this TP rank's chunk of the sequence
            rank = tp_group.rank()
            ids = ids[rank * seq:(rank + 1) * seq]
        if ids.shape != (seq, batch):
            raise GtsError(f"group ids of shape {tuple(ids.shape)} do not match the tokens ({seq}, {batch})")
        return ids.reshape(-1)

    def reset(self) -> None:
        """Forget the router calls so far (an evaluation's, before training starts)."""
        self._total, self._passes = None, 0
        tracked = get_moe_layer_wise_logging_tracker().get("load_balancing_loss")
        if tracked is not None:
            tracked["values"].zero_()

    def record(self, stats: torch.Tensor) -> None:
        """Add one router call's [ce sum, correct, tokens]."""
        self._total = stats if self._total is None else self._total + stats

    def step_metrics(self, device: torch.device, num_layers: int, sequence_parallel: bool, tp_group, dp_group,
                     pp_group) -> dict[str, float]:
        """The router metrics of the forward passes since the last call (a training step's
        micro-batches, or an evaluation's), over every MoE layer and rank: router loss and accuracy
        (group routing), megatron's load-balancing loss (learned routing). Each pipeline stage
        holds its own layers' share. Collective over the given groups, on every rank alike."""
        total = self._total.to(device) if self._total is not None else torch.zeros(3, device=device)
        tracked = get_moe_layer_wise_logging_tracker().get("load_balancing_loss")
        balance = tracked["values"] if tracked is not None else torch.zeros(num_layers, device=device)
        if tracked is not None and tracked.get("reduce_group") is not None:  # each TP rank holds its
            dist.all_reduce(balance, group=tracked["reduce_group"])          # share (megatron's logging too)
        balance = balance.to(device).float() / max(self._passes, 1)  # per layer and forward pass
        for group in (dp_group, pp_group, tp_group if sequence_parallel else None):  # SP: each its own chunk
            if group is not None and dist.get_world_size(group) > 1:
                dist.all_reduce(total, group=group)
        for group in (dp_group, pp_group):  # the stages hold disjoint layers; the DP ranks are averaged
            if group is not None and dist.get_world_size(group) > 1:
                dist.all_reduce(balance, group=group)
        self.reset()
        out = {}
        if total[2] > 0:
            out.update(router_loss=float(total[0] / total[2]), router_accuracy=float(total[1] / total[2]))
        if bool((balance != 0).any()):  # in training only
            dp = dist.get_world_size(dp_group) if dp_group is not None else 1
            out["load_balancing_loss"] = float(balance.sum() / int((balance != 0).sum()) / dp)
        return out


ROUTING = RoutingContext()


def handover_share(step: int, handover_steps: int) -> float:
    """The share of learned routing after ``step`` steps of stage 2: linear from 0 to 1 over
    ``handover_steps`` (1 at once when there is no handover)."""
    return 1.0 if handover_steps <= 0 else min(1.0, step / handover_steps)


def exclude_from_grad_norm(param: torch.nn.Parameter) -> None:
    """Leave ``param`` out of the norm that megatron's optimizer clips every gradient by.

    Megatron skips parameters flagged ``shared`` (their gradients would count twice) when it
    computes that norm, and still scales their gradients with the rest. The group router's
    weight gets its gradient from its classification loss alone (group routing ignores its
    logits); left in the norm it dominated it (5.9-9.1 against 0.8 for everything else at the
    start of stage 1, measured), so clipping shrank every language-model update 6-9 fold."""
    param.shared = True


class GroupRouter(Router):
    """Stage 1: top-1 routing to the expert of each token's language group, weight 1, plus the
    router classification loss on the router's logits (MoELayer's router interface)."""

    def __init__(self, config: TransformerConfig, pg_collection=None, group_to_expert=(0,),
                 loss_weight: float = 1.28, into_model: bool = False):
        super().__init__(config, pg_collection)
        self.loss_weight = loss_weight
        self.into_model = into_model
        self.register_buffer("group_to_expert", torch.tensor(list(group_to_expert), dtype=torch.long),
                             persistent=False)
        # its gradient comes from its own loss alone (group routing ignores its logits); into_model
        # or not, it must not set the pace of the language model's updates
        exclude_from_grad_norm(self.weight)

    def routing(self, logits: torch.Tensor):
        raise NotImplementedError("GroupRouter routes by group id, not by logits")

    def forward(self, input: torch.Tensor, padding_mask=None):
        """hidden [s, b, h] -> (probs, routing_map), each [s*b, experts], one expert per token."""
        seq, batch = input.shape[:2]
        groups = ROUTING.token_group_ids(seq, batch, self.config.sequence_parallel, self.tp_group)
        experts = self.group_to_expert.to(groups.device)[groups]
        routing_map = F.one_hot(experts, self.num_experts).bool()
        probs = routing_map.to(input.dtype)
        # group routing ignores the logits, so the router loss is their only use; detached, it
        # trains the router without pulling the hidden states below it toward language ids
        logits = self.gating(input if self.into_model else input.detach()).reshape(-1, self.num_experts).float()
        ce_sum = F.cross_entropy(logits, experts, reduction="sum")
        ROUTING.record(torch.stack([ce_sum.detach(), (logits.argmax(-1) == experts).sum().float(),
                                    torch.tensor(float(experts.numel()), device=logits.device)]))
        if self.training and self.loss_weight > 0 and torch.is_grad_enabled():
            # mean over every token of the micro-batch: with sequence parallelism the router's
            # gradient is summed over TP ranks, so each rank divides by the global token count
            tokens = experts.numel() * (self.tp_group.size() if self.config.sequence_parallel else 1)
            probs = MoEAuxLossAutoScaler.apply(probs, ce_sum * (self.loss_weight / tokens))
        return probs, routing_map


class HandoverRouter(TopKRouter):
    """Stage 2: megatron's top-k router, with group routing blended in while the hand-over lasts.

    With share ``b`` = :attr:`RoutingContext.handover` below 1 and group ids at hand, each token
    goes to its group's expert and to the k-1 other experts its logits rank highest, weighted
    ``(1 - b) * onehot(group) + b * softmax(its logits over those k)``. At ``b = 0`` that is stage
    1's function exactly; at ``b = 1`` (and whenever there are no group ids: evaluation,
    inference) it is megatron's top-k routing alone. Exactly k experts per token, so every
    dispatcher takes it; megatron's load-balancing loss stays attached throughout."""

    def __init__(self, config: TransformerConfig, pg_collection=None, group_to_expert=(0,)):
        super().__init__(config, pg_collection)
        self.register_buffer("group_to_expert", torch.tensor(list(group_to_expert), dtype=torch.long),
                             persistent=False)

    def forward(self, input: torch.Tensor, padding_mask=None):
        """hidden [s, b, h] -> (probs, routing_map), each [s*b, experts], k experts per token."""
        share = ROUTING.handover
        if share is None or share >= 1.0 or ROUTING.group_ids is None:
            return super().forward(input, padding_mask)
        seq, batch = input.shape[:2]
        groups = ROUTING.token_group_ids(seq, batch, self.config.sequence_parallel, self.tp_group)
        own = F.one_hot(self.group_to_expert.to(groups.device)[groups], self.num_experts).bool()
        logits = self.gating(self.apply_input_jitter(input))
        learned, _ = self.routing(logits, padding_mask=padding_mask)  # carries the load-balancing loss
        flat = logits.reshape(-1, self.num_experts).float()
        chosen = flat.masked_fill(own, float("inf")).topk(self.topk, dim=-1).indices
        routing_map = torch.zeros_like(own).scatter(1, chosen, True)
        weights = torch.softmax(flat.masked_fill(~routing_map, float("-inf")), dim=-1)
        probs = (1.0 - share) * own.to(weights.dtype) + share * weights
        return (probs + 0.0 * learned).to(learned.dtype), routing_map  # 0 *: the loss rides on it


def moe_transformer_fields(model: ModelConfig, moe: MoEConfig, plan: Plan) -> dict:
    """TransformerConfig fields that make the planned layers MoE layers for ``moe.stage``."""
    learned = moe.stage == "learned"
    topk = moe.topk if learned else 1
    return dict(
        num_moe_experts=plan.num_experts, moe_ffn_hidden_size=model.ffn_hidden_size,
        moe_layer_freq=[int(i in plan.moe_layers) for i in range(model.num_layers)],
        moe_router_topk=topk, moe_router_pre_softmax=topk == 1,  # top-2: softmax over the chosen two
        moe_router_load_balancing_type="aux_loss" if learned else "none",
        moe_aux_loss_coeff=moe.aux_loss_coeff if learned else 0.0,
        # the group dispatcher takes the place of megatron's alltoall one once the model is built
        moe_token_dispatcher_type="alltoall" if moe.dispatcher_type == "group" else moe.dispatcher_type,
        moe_grouped_gemm=False, moe_router_dtype="fp32")


def gts_decoder_spec(config: TransformerConfig, model: ModelConfig, moe: MoEConfig,
                     plan: Plan) -> TransformerBlockSubmodules:
    """The dense decoder spec with the stage's router in the MoE layers: group routers (stage
    "group"), or megatron's top-k routers with the hand-over from group routing (stage "learned")."""
    block = decoder_spec(config, model.attention)
    if moe.stage == "group":
        router = functools.partial(GroupRouter, group_to_expert=plan.group_to_expert,
                                   loss_weight=moe.router_loss_weight, into_model=moe.router_loss_into_model)
    else:
        router = functools.partial(HandoverRouter, group_to_expert=plan.group_to_expert)
    for spec in block.layer_specs:
        if spec.submodules.mlp.module is MoELayer:
            spec.submodules.mlp.submodules.router = router
            spec.submodules.mlp.submodules.shared_experts = None
    return block


def build_moe_model(model: ModelConfig, parallel: ParallelConfig, moe: MoEConfig, plan: Plan):
    """The expanded model for ``moe.stage`` on this rank (its TP/EP shard) and its TransformerConfig."""
    config = transformer_config(model, parallel, **moe_transformer_fields(model, moe, plan))
    gts = build_model(model, config, gts_decoder_spec(config, model, moe, plan))
    if moe.dispatcher_type == "group":
        use_group_dispatcher(gts, placement=moe.placement)
    return gts, config

