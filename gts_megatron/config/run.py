"""The run config: five typed sections (model, parallel, train, data, moe) and their checks."""
from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gts_megatron.errors import GtsError


class _Section(BaseModel):
    # strict: no silent "5" -> 5 or 1 -> True coercions; extra keys are typos, not options.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelConfig(_Section):
    """A Llama-style decoder: RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases.

    In a run config, ``model: <preset>`` takes a packaged preset and
    ``model: {preset: <name>, <field>: <value>}`` takes one with changes.
    """

    num_layers: int = Field(2, ge=1, description="number of transformer layers")
    hidden_size: int = Field(64, ge=1, description="model width")
    num_attention_heads: int = Field(4, ge=1, description="query heads")
    num_query_groups: Optional[int] = Field(
        None, ge=1, description="key/value heads for grouped-query attention; null = one per query head")
    ffn_hidden_size: int = Field(128, ge=1, description="SwiGLU inner width (per gate)")
    vocab_size: int = Field(256, ge=2, description="vocabulary size (the tokenizer's, once data has one)")
    max_seq_length: int = Field(128, ge=1, description="longest sequence the model is built for")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency")
    rope_scaling_factor: Optional[float] = Field(
        None, gt=0, description="Llama 3 RoPE scaling factor (low/high frequency factors 1 and 4, original "
                                "context 8192); null = no scaling")
    qkv_bias: bool = Field(False, description="biases on the query, key and value projections (Qwen2)")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon")
    tie_embeddings: bool = Field(True, description="share input embedding and output projection")
    init_std: float = Field(0.02, gt=0, description="std of the normal weight initialisation")
    hidden_dropout: float = Field(0.0, ge=0, lt=1, description="dropout after attention and MLP")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention probabilities")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="parameter and compute dtype")
    attention: Literal["sdpa", "local"] = Field(
        "sdpa", description="sdpa: torch scaled_dot_product_attention (flash kernels on GPU); "
                            "local: megatron-core's unfused DotProductAttention")

    @model_validator(mode="after")
    def _shapes_divide(self) -> "ModelConfig":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % groups:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_query_groups {groups}")
        return self


class ParallelConfig(_Section):
    """How the model is split over processes; data parallelism takes the rest of the world."""

    tensor: int = Field(1, ge=1, description="tensor-parallel size")
    pipeline: int = Field(1, ge=1, description="pipeline-parallel size: the layers split into this many stages "
                                               "(megatron-core's 1F1B schedule)")
    pipeline_layers: Optional[list[int]] = Field(
        None, description="transformer layers of each pipeline stage, first to last (they sum to "
                          "model.num_layers); null = an even split")
    expert: int = Field(1, ge=1, description="expert-parallel size (MoE layers)")
    expert_tensor: Optional[int] = Field(
        None, ge=1, description="tensor-parallel size inside each expert; null = parallel.tensor")
    data: Optional[int] = Field(
        None, ge=1, description="data-parallel size; null = world size / (tensor x pipeline)")
    sequence_parallel: bool = Field(
        False, description="shard activations along the sequence across tensor-parallel ranks")
    distributed_optimizer: bool = Field(False, description="shard optimizer state over data-parallel ranks")

    @property
    def expert_tensor_size(self) -> int:
        """Tensor-parallel size inside each expert (megatron's default: the dense TP size)."""
        return self.expert_tensor if self.expert_tensor is not None else self.tensor

    @model_validator(mode="after")
    def _experts_reducible(self) -> "ParallelConfig":
        if self.expert == 1 and self.expert_tensor_size != self.tensor:
            # megatron-core 0.16.1 treats experts without expert parallelism as dense weights and
            # reduces their gradients over the data-parallel group only, so replicas on different
            # tensor-parallel ranks (which see different tokens) would silently drift apart
            raise ValueError(f"expert_tensor {self.expert_tensor} must equal tensor {self.tensor} "
                             f"when expert is 1")
        if self.pipeline_layers is not None:
            if len(self.pipeline_layers) != self.pipeline or min(self.pipeline_layers) < 1:
                raise ValueError(f"pipeline_layers {self.pipeline_layers} must give each of the {self.pipeline} "
                                 f"pipeline stages at least one layer")
        return self

    def stage_layers(self, num_layers: int) -> list[int]:
        """Transformer layers per pipeline stage, or a GtsError if ``num_layers`` cannot be split so."""
        if self.pipeline_layers is not None:
            if sum(self.pipeline_layers) != num_layers:
                raise GtsError(f"parallel.pipeline_layers {self.pipeline_layers} sum to {sum(self.pipeline_layers)}, "
                               f"not model.num_layers {num_layers}")
            return list(self.pipeline_layers)
        if num_layers % self.pipeline:
            raise GtsError(f"parallel.pipeline {self.pipeline} does not divide model.num_layers {num_layers}; "
                           f"give parallel.pipeline_layers (layers per stage) for an uneven split")
        return [num_layers // self.pipeline] * self.pipeline

    def data_parallel_size(self, world_size: int) -> int:
        """The data-parallel size for ``world_size`` processes, or a GtsError if it cannot hold."""
        model_parallel = self.tensor * self.pipeline
        if world_size % model_parallel:
            raise GtsError(f"parallel.tensor({self.tensor}) x parallel.pipeline({self.pipeline}) = {model_parallel} "
                           f"does not divide the world size {world_size}")
        dp = world_size // model_parallel
        if self.data is not None and self.data != dp:
            raise GtsError(
                f"parallel layout tensor({self.tensor}) x pipeline({self.pipeline}) x data({self.data}) = "
                f"{model_parallel * self.data} does not match the world size {world_size}; set parallel.data "
                f"to {dp} or null")
        if (world_size // self.pipeline) % (self.expert * self.expert_tensor_size):
            raise GtsError(
                f"parallel.expert({self.expert}) x parallel.expert_tensor({self.expert_tensor_size}) "
                f"does not divide the {world_size // self.pipeline} processes of a pipeline stage")
        return dp


class TrainConfig(_Section):
    """Optimiser, schedule, batching, checkpointing and logging of a training run."""

    steps: int = Field(10, ge=0, description="optimizer steps to train for (total, across resumes)")
    micro_batch_size: int = Field(2, ge=1, description="sequences per forward pass per data-parallel rank")
    global_batch_size: int = Field(
        4, ge=1, description="sequences per optimizer step; the rest is gradient accumulation")
    seq_length: int = Field(64, ge=2, description="tokens per training sequence")
    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    min_lr: float = Field(3e-5, ge=0, description="learning rate at the end of the decay")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    lr_decay: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warm-up")
    lr_decay_steps: Optional[int] = Field(None, ge=1, description="decay length; null = steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay")
    adam_beta1: float = Field(0.9, gt=0, lt=1, description="Adam beta1")
    adam_beta2: float = Field(0.95, gt=0, lt=1, description="Adam beta2")
    adam_eps: float = Field(1e-8, gt=0, description="Adam epsilon")
    clip_grad: float = Field(1.0, ge=0, description="global gradient-norm clip; 0 = off")
    seed: int = Field(1234, ge=0, description="seed for initialisation, dropout and data order")
    log_interval: int = Field(1, ge=1, description="steps between logged metrics")
    save_interval: int = Field(0, ge=0, description="steps between checkpoints; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1, description="most recent checkpoints kept on disk")
    eval_samples: int = Field(8, ge=0, description="held-out sequences per validation set (per language)")
    eval_interval: int = Field(0, ge=0, description="steps between validations (and one before training); 0 = only at the end")
    data_offset: int = Field(
        0, ge=0, description="training samples of the mixture to skip at the start: a run that goes on with "
                             "the data after another run's (its consumed samples) instead of reading them again")
    init_from: Optional[str] = Field(
        None, description="checkpoint whose model weights start a new run (any parallel layout)")
    init_optimizer: bool = Field(
        False, description="with init_from: also start from its Adam moments (continued training, as Megatron-LM "
                           "loading with --override-opt_param-scheduler); step, schedule and data start anew")
    tensorboard: bool = Field(True, description="write TensorBoard scalars to <run>/tensorboard")

    def lr_at(self, step: int) -> float:
        """The learning rate megatron's scheduler gives at ``step`` under this schedule (used to
        continue one schedule across two runs, as GtS stage 2 does after stage 1)."""
        decay_steps = max(1, self.lr_decay_steps or self.steps)
        if self.warmup_steps and step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.lr_decay == "constant":
            return self.lr
        ratio = min(1.0, (step - self.warmup_steps) / max(1, decay_steps - self.warmup_steps))
        factor = 0.5 * (math.cos(math.pi * ratio) + 1.0) if self.lr_decay == "cosine" else 1.0 - ratio
        return self.min_lr + (self.lr - self.min_lr) * factor

    @model_validator(mode="after")
    def _batches_divide(self) -> "TrainConfig":
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of "
                             f"micro_batch_size {self.micro_batch_size}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is larger than lr {self.lr}")
        decay = self.lr_decay_steps or self.steps
        if self.steps and self.warmup_steps >= decay:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be smaller than the decay length "
                             f"{decay} (lr_decay_steps, or steps when it is null)")
        return self


class DataConfig(_Section):
    """Where training tokens come from."""

    kind: Literal["synthetic", "indexed"] = Field(
        "synthetic", description="synthetic: a seeded Markov-chain token stream (no files needed); "
                                 "indexed: a data directory from `gts data prepare` or `gts data synthetic`")
    path: Optional[str] = Field(None, description="indexed: the data directory (holds manifest.json)")
    languages: Optional[list[str]] = Field(None, description="indexed: languages to train on; null = all")
    alpha: float = Field(
        0.3, ge=0, le=1, description="indexed: language sampling probability proportional to tokens^alpha")
    successors: int = Field(4, ge=1, description="synthetic: possible next tokens per token")

    @model_validator(mode="after")
    def _indexed_has_path(self) -> "DataConfig":
        if self.kind == "indexed" and not self.path:
            raise ValueError("kind indexed needs path: the data directory with manifest.json")
        return self


class MoEConfig(_Section):
    """The GtS mixture-of-experts: which plan, which training stage, how tokens are dispatched."""

    plan: Optional[str] = Field(None, description="plan.json (groups, experts, MoE layers); null = a dense model")
    stage: Literal["group", "learned"] = Field(
        "group", description="group: each token to its language group's expert, plus the router loss; "
                             "learned: megatron's top-k router with load balancing (no group ids needed)")
    dispatcher: Literal["auto", "group", "alltoall", "allgather"] = Field(
        "auto", description="token dispatcher: group (the csrc kernels; top-1 group routing only), megatron-core's "
                            "alltoall or allgather; auto = group for stage group, alltoall for stage learned")
    placement: bool = Field(
        False, description="group-aware placement (stage group): each EP rank trains only on the groups whose "
                           "experts it holds, an equal share of every batch, so the group dispatcher skips the "
                           "all-to-all in training")
    router_loss_weight: float = Field(1.28, ge=0, description="group: weight alpha of the router classification loss")
    router_loss_into_model: bool = Field(
        True, description="group: let the router loss's gradient reach the layers below the router (the "
                          "paper's plain `LM + alpha * L_rc`), so the hidden states carry the language group "
                          "and stage 2's learned routers can find it; off, it trains the routers alone (better "
                          "under group routing, but stage 2 then misroutes: docs/method.md)")
    topk: int = Field(2, ge=1, description="learned: experts per token")
    handover: float = Field(
        0.5, ge=0, le=1, description="learned: share of the stage's steps over which routing passes linearly from "
                                     "group routing (stage 1's function, so the switch costs nothing) to the "
                                     "learned top-k alone; 0 = switch at once (needs data with languages)")
    aux_loss_coeff: float = Field(0.02, ge=0, description="learned: load-balancing loss coefficient")


    @model_validator(mode="after")
    def _dispatcher_fits_stage(self) -> "MoEConfig":
        if self.stage == "learned" and self.dispatcher == "group":
            raise ValueError("dispatcher group needs stage group (one expert per token); use alltoall or auto")
        if self.placement and self.stage != "group":
            raise ValueError("placement needs stage group: learned routing can send a token to any expert")
        return self

    @property
    def dispatcher_type(self) -> str:
        """The dispatcher in use: ``dispatcher`` with auto resolved for the stage."""
        if self.dispatcher == "auto":
            return "group" if self.stage == "group" else "alltoall"
        return self.dispatcher


class RunConfig(_Section):
    """A whole run: model, parallel layout, training, data and (for GtS stages) the MoE."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    moe: MoEConfig = Field(default_factory=MoEConfig)

    @model_validator(mode="after")
    def _fits_model(self) -> "RunConfig":
        if self.train.seq_length > self.model.max_seq_length:
            raise ValueError(f"train.seq_length {self.train.seq_length} exceeds "
                             f"model.max_seq_length {self.model.max_seq_length}")
        heads, groups = self.model.num_attention_heads, self.model.num_query_groups or self.model.num_attention_heads
        tp = self.parallel.tensor
        if heads % tp or groups % tp:
            raise ValueError(f"parallel.tensor {tp} must divide num_attention_heads {heads} "
                             f"and num_query_groups {groups}")
        if self.model.ffn_hidden_size % tp:
            raise ValueError(f"parallel.tensor {tp} must divide ffn_hidden_size {self.model.ffn_hidden_size}")
        if self.moe.plan and tp > 1 and not self.parallel.sequence_parallel:
            raise ValueError("an MoE model with parallel.tensor > 1 needs parallel.sequence_parallel: "
                             "megatron-core refuses to train MoE layers with tensor parallelism without it")
        if self.moe.plan and self.moe.stage == "group" and self.data.kind != "indexed":
            raise ValueError("moe.stage group routes tokens by their language's group: it needs "
                             "data.kind indexed (a data directory with languages)")
        if self.moe.placement and self.parallel.expert_tensor_size != tp:
            raise ValueError(f"moe.placement needs parallel.expert_tensor equal to parallel.tensor {tp}: "
                             f"otherwise EP ranks share tensor-parallel ranks, which read the same samples")
        try:
            self.parallel.stage_layers(self.model.num_layers)
        except GtsError as exc:
            raise ValueError(str(exc)) from None
        if self.parallel.sequence_parallel and self.train.seq_length % tp:
            raise ValueError(f"sequence_parallel needs train.seq_length {self.train.seq_length} "
                             f"divisible by parallel.tensor {tp}")
        return self

    def data_parallel_size(self, world_size: int) -> int:
        """The data-parallel size for ``world_size`` processes, checked against the batch sizes."""
        dp = self.parallel.data_parallel_size(world_size)
        t = self.train
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise GtsError(f"train.global_batch_size {t.global_batch_size} must be a multiple of "
                           f"micro_batch_size {t.micro_batch_size} x data-parallel size {dp}")
        return dp
