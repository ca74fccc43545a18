"""Typed options of `gts bench train` (its --flags), validated here and nowhere else."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from gts_megatron.config.run import _Section
from gts_megatron.config.loading import build_config, model_presets

# megatron-core arms, then the DeepSpeed ones (the authors' approach; DeepSpeed-MoE's layer)
ARMS = ("dense", "gts-alltoall", "gts-group", "gts-placement", "authors-zero", "deepspeed-moe")
Arm = Literal["dense", "gts-alltoall", "gts-group", "gts-placement", "authors-zero", "deepspeed-moe"]
DEEPSPEED_ARMS = ("authors-zero", "deepspeed-moe")


def known_preset(value: str) -> str:
    """``value`` if it names a packaged model preset, else a ValueError listing them."""
    if value not in model_presets():
        raise ValueError(f"unknown preset {value!r}; valid presets: {', '.join(model_presets())}")
    return value


class BenchTrainConfig(_Section):
    """`gts bench train`: N warm-up and M timed training steps of each arm (dense, GtS under each
    dispatcher, the authors' HF + DeepSpeed ZeRO approach, DeepSpeed-MoE), taking turns step by
    step at equal model, batch and layout."""

    preset: str = Field("small", description="model preset of the dense model (see `gts config presets`)")
    experts: int = Field(4, ge=1, description="experts (= language groups) per MoE layer")
    moe_every: int = Field(2, ge=1, description="every k-th layer (from layer 1) becomes an MoE layer")
    arms: Optional[list[Arm]] = Field(
        None, description=f"what to measure, of {', '.join(ARMS)}; null = every arm the layout allows "
                          "(gts-placement needs expert > 1)")
    steps: int = Field(30, description="timed steps per arm (at least 1)")
    warmup: int = Field(5, ge=0, description="untimed steps per arm before the timed ones")
    split_steps: int = Field(1, ge=0, description="extra steps per arm timed module by module for the time split")
    sequential: bool = Field(
        False, description="measure one arm at a time, freeing it before the next: for models too large to "
                           "hold together (a 1B model's arms on one GPU); drift between arms is then not cancelled")
    micro_batch_size: int = Field(8, ge=1, description="sequences per micro-batch")
    global_batch_size: Optional[int] = Field(
        None, ge=1, description="sequences per step; null = 2 micro-batches per data-parallel rank")
    seq_length: int = Field(256, ge=8, description="tokens per sequence")
    nproc_per_node: int = Field(1, ge=1, description="processes on this machine (gloo on CPU, NCCL on GPUs)")
    tensor: int = Field(1, ge=1, description="tensor-parallel size of the megatron arms")
    pipeline: int = Field(1, ge=1, description="pipeline-parallel size of the megatron arms (megatron-core's 1F1B "
                                               "over each rank's micro-batches); the DeepSpeed arms have none")
    pipeline_layers: Optional[list[int]] = Field(
        None, description="transformer layers of each pipeline stage, first to last (the last stage also holds "
                          "the output layer); null = an even split")
    expert: int = Field(1, ge=1, description="expert-parallel size of the MoE arms")
    dtype: Literal["fp32", "bf16"] = Field("fp32", description="training precision")
    peak_tflops: Optional[float] = Field(
        None, description="peak TFLOP/s of one device for MFU; null = measure a matmul on each device")
    out: Optional[str] = Field(None, description="also write the result JSON here")
    work_dir: Optional[str] = Field(None, description="where the temporary models and data go")
    seed: int = Field(1234, ge=0, description="seed of the weights and the data")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return known_preset(value)

    @model_validator(mode="after")
    def _meaningful(self) -> "BenchTrainConfig":
        if self.steps < 1:
            raise ValueError(f"steps {self.steps}: a benchmark needs at least 1 timed step")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"peak_tflops {self.peak_tflops:g}: a peak must be a positive number of TFLOP/s "
                             "(leave it out to measure one)")
        world = self.nproc_per_node
        for name, size in (("tensor", self.tensor), ("expert", self.expert)):
            if world % size:
                raise ValueError(f"{name} {size} does not divide the {world} processes (--nproc-per-node)")
        if self.pipeline > 1 or self.pipeline_layers is not None:
            self._check_pipeline(world)
        if self.experts % self.expert:
            raise ValueError(f"expert {self.expert}: {self.experts} experts cannot be spread evenly over "
                             f"{self.expert} expert-parallel ranks")
        if self.arms is not None:
            if not self.arms:
                raise ValueError(f"arms is empty; choose from {', '.join(ARMS)}")
            if "gts-placement" in self.arms and self.expert == 1:
                raise ValueError("arm gts-placement needs expert > 1: with one expert-parallel rank there is "
                                 "nothing to place")
        if self.global_batch_size is not None:
            for engine, dp in (("megatron", self.data_parallel), ("DeepSpeed", world)):
                if self.global_batch_size % (self.micro_batch_size * dp):
                    raise ValueError(
                        f"global_batch_size {self.global_batch_size} must be a multiple of micro_batch_size "
                        f"{self.micro_batch_size} x {engine} data-parallel size {dp}")
        return self

    def _check_pipeline(self, world: int) -> None:
        """The pipeline layout the megatron arms will be built with, checked before anything runs."""
        ours = [a for a in self.arms or [] if a in DEEPSPEED_ARMS]
        if ours:
            raise ValueError(f"arms {', '.join(ours)}: the DeepSpeed arms have no pipeline parallelism; leave them "
                             f"out or set pipeline 1")
        if world % (self.tensor * self.pipeline):
            raise ValueError(f"tensor {self.tensor} x pipeline {self.pipeline} = {self.tensor * self.pipeline} does "
                             f"not divide the {world} processes (--nproc-per-node)")
        if (world // self.pipeline) % self.expert:
            raise ValueError(f"expert {self.expert} does not divide the {world // self.pipeline} processes of a "
                             f"pipeline stage")
        layers = build_config({"model": self.preset}, "gts bench train").model.num_layers
        if self.pipeline_layers is not None:
            if len(self.pipeline_layers) != self.pipeline or min(self.pipeline_layers) < 1 or \
                    sum(self.pipeline_layers) != layers:
                raise ValueError(f"pipeline_layers {self.pipeline_layers} must give each of the {self.pipeline} "
                                 f"stages at least one layer and sum to the {layers} layers of preset {self.preset}")
        elif layers % self.pipeline:
            raise ValueError(f"pipeline {self.pipeline} does not divide the {layers} layers of preset {self.preset}; "
                             f"give pipeline_layers for an uneven split")

    @property
    def data_parallel(self) -> int:
        """Data-parallel size of the megatron arms (DeepSpeed's is the world size)."""
        return self.nproc_per_node // (self.tensor * self.pipeline)

    @property
    def micro_batches(self) -> int:
        """Micro-batches per data-parallel rank and step (what fills a pipeline)."""
        return self.batch // (self.data_parallel * self.micro_batch_size)

    @property
    def batch(self) -> int:
        """Sequences per optimizer step, the same for every arm."""
        if self.global_batch_size is not None:
            return self.global_batch_size
        return 2 * self.micro_batch_size * self.nproc_per_node  # a multiple of both DP sizes

    @property
    def arm_names(self) -> list[str]:
        """The arms to measure, in the order of :data:`ARMS`."""
        wanted = self.arms or [a for a in ARMS if (a != "gts-placement" or self.expert > 1)
                               and (a not in DEEPSPEED_ARMS or self.pipeline == 1)]
        return [a for a in ARMS if a in wanted]


def _positive(values: list[int]) -> list[int]:
    if not values or min(values) < 1:
        raise ValueError("give positive integers, e.g. 2048,4096")
    return values


class BenchDispatchConfig(_Section):
    """`gts bench dispatch`: permute + unpermute bandwidth of each dispatch method."""

    hidden: list[int] = Field([2048, 4096, 8192], description="hidden sizes (comma-separated)")
    tokens: list[int] = Field([4096, 16384, 65536], description="token counts (comma-separated)")
    groups: int = Field(8, ge=1, description="language groups (experts)")
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="element type of the hidden states")
    repeats: int = Field(5, ge=1, description="timed round trips per method and size")
    device: str = Field("auto", description="auto (cuda when there is one), cpu or cuda")

    @field_validator("hidden", "tokens")
    @classmethod
    def _sizes(cls, values: list[int]) -> list[int]:
        return _positive(values)


class BenchProbesConfig(_Section):
    """`gts bench probes`: a probe fleet's wall time against one probe alone."""

    preset: str = Field("small", description="model preset")
    languages: int = Field(4, ge=1, description="synthetic languages to probe")
    steps: int = Field(10, ge=1, description="steps per probe")
    seq_length: int = Field(256, ge=2, description="tokens per sequence")
    cpus_per_probe: int = Field(1, ge=1, description="CPUs reserved per probe")
    work_dir: Optional[str] = Field(None, description="where to put the temporary runs (default: the system "
                                                      "temp dir)")


class BenchLayoutConfig(_Section):
    """`gts bench layout`: a PP x TP x EP x DP layout for a GtS model on a GPU cluster, computed
    from the model's shape: memory per GPU, the pipeline bubble and the all-to-all volume."""

    preset: str = Field("llama-70b", description="model preset of the dense base (see `gts config presets`)")
    experts: int = Field(8, ge=1, description="experts per MoE layer (= language groups)")
    moe_layers: int = Field(16, ge=0, description="MoE layers of the plan (the layers that moved most)")
    nodes: int = Field(8, ge=1, description="nodes")
    gpus_per_node: int = Field(8, ge=1, description="GPUs per node (tensor parallelism stays inside one)")
    gpu_memory_gb: float = Field(80.0, gt=0, description="memory of one GPU, GB (H100 SXM: 80)")
    seq_length: int = Field(4096, ge=1, description="tokens per sequence")
    micro_batch_size: int = Field(1, ge=1, description="sequences per micro-batch")
    global_batch_size: int = Field(1024, ge=1, description="sequences per optimizer step")
    recompute: Literal["selective", "none", "full"] = Field(
        "selective", description="activation recomputation: memory of the layers' activations per micro-batch")
    top: int = Field(8, ge=1, description="layouts to list, best first")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return known_preset(value)
