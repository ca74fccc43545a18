"""Typed, validated run configuration: the one place where config values are checked.

A run config is YAML with five sections (``model``, ``parallel``, ``train``, ``data``, ``moe``). Every
field is documented below; ``gts config show`` prints them with their defaults. Unknown keys and
wrong types are rejected with a one-line :class:`GtsError` naming the file and the field.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    expert: int = Field(1, ge=1, description="expert-parallel size (MoE layers)")
    expert_tensor: Optional[int] = Field(
        None, ge=1, description="tensor-parallel size inside each expert; null = parallel.tensor")
    data: Optional[int] = Field(
        None, ge=1, description="data-parallel size; null = world size / tensor")
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
        return self

    def data_parallel_size(self, world_size: int) -> int:
        """The data-parallel size for ``world_size`` processes, or a GtsError if it cannot hold."""
        if world_size % self.tensor:
            raise GtsError(f"parallel.tensor={self.tensor} does not divide the world size {world_size}")
        dp = world_size // self.tensor
        if self.data is not None and self.data != dp:
            raise GtsError(
                f"parallel layout tensor({self.tensor}) x data({self.data}) = {self.tensor * self.data} "
                f"does not match the world size {world_size}; set parallel.data to {dp} or null")
        if world_size % (self.expert * self.expert_tensor_size):
            raise GtsError(
                f"parallel.expert({self.expert}) x parallel.expert_tensor({self.expert_tensor_size}) "
                f"does not divide the world size {world_size}")
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
    init_from: Optional[str] = Field(
        None, description="checkpoint whose model weights start a new run (any parallel layout)")
    tensorboard: bool = Field(True, description="write TensorBoard scalars to <run>/tensorboard")

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
    dispatcher: Literal["alltoall", "allgather"] = Field("alltoall", description="megatron-core token dispatcher")
    router_loss_weight: float = Field(1.28, ge=0, description="group: weight alpha of the router classification loss")
    topk: int = Field(2, ge=1, description="learned: experts per token")
    aux_loss_coeff: float = Field(0.02, ge=0, description="learned: load-balancing loss coefficient")


class PrepareConfig(_Section):
    """`gts data prepare`: corpus directory -> tokenizer -> per-language token datasets."""

    corpus: str = Field(description="directory with one file per language (<lang>.txt/.jsonl[.gz])")
    languages: Optional[list[str]] = Field(None, description="languages to take; null = every file")
    tokenizer: Optional[str] = Field(
        None, description="existing tokenizer (SentencePiece .model or HF tokenizer.json); null = train one")
    eod_token: Optional[str] = Field(None, description="end-of-document token of an HF tokenizer")
    vocab_size: int = Field(8000, ge=300, description="vocabulary of a trained SentencePiece tokenizer")
    model_type: Literal["bpe", "unigram"] = Field("bpe", description="SentencePiece algorithm")
    character_coverage: float = Field(0.9995, gt=0, le=1, description="SentencePiece character coverage")
    sample_alpha: float = Field(
        0.3, ge=0, le=1, description="tokenizer sample: language weights proportional to characters^alpha")
    sample_characters: int = Field(
        20_000_000, ge=10_000, description="characters in the tokenizer's training sample")
    valid_fraction: float = Field(0.01, ge=0, lt=0.5, description="documents held out for validation")
    test_fraction: float = Field(0.01, ge=0, lt=0.5, description="documents held out for testing")
    separator: Literal["auto", "line", "blank"] = Field(
        "auto", description="plain-text documents: one per line, blank-line separated, or detected")
    text_field: str = Field("text", description="JSONL field holding the document text")
    skip_bad_lines: bool = Field(False, description="drop (and count) lines with bad UTF-8 or JSON")
    seed: int = Field(1234, ge=0, description="seed of the tokenizer sample and the split assignment")


class ProbeConfig(_Section):
    """`gts probe`: one short full fine-tune per language from the dense base (the paper's step 1-2)."""

    base: str = Field(description="dense base checkpoint (or a checkpoints directory: its latest)")
    data: str = Field(description="data directory from `gts data prepare` or `gts data synthetic`")
    languages: Optional[list[str]] = Field(None, description="languages to probe; null = every one in the data")
    engine: Literal["megatron", "deepspeed"] = Field(
        "megatron", description="megatron: the training engine of the other stages; deepspeed: ZeRO with CPU "
                                "offload, for models too large for one device")
    zero_stage: Literal[2, 3] = Field(3, description="deepspeed: ZeRO stage (3 also offloads the parameters)")
    steps: int = Field(10, ge=1, description="optimizer steps per probe")
    lr: float = Field(8e-6, gt=0, description="peak learning rate (linear decay to 0, no warm-up, no weight decay)")
    micro_batch_size: int = Field(2, ge=1, description="sequences per forward pass")
    global_batch_size: int = Field(8, ge=1, description="sequences per step")
    seq_length: int = Field(128, ge=2, description="tokens per sequence")
    sketch_size: int = Field(4096, ge=16, description="CountSketch length per layer")
    exact: bool = Field(False, description="keep the full FFN deltas instead of sketches (small models)")
    seed: int = Field(1234, ge=0, description="seed of training and of the sketch hash (the same for every language)")
    cpus_per_probe: int = Field(1, ge=1, description="CPUs (threads) each probe task reserves on Ray")
    gpus_per_probe: float = Field(0, ge=0, description="GPUs each probe task reserves on Ray")
    retries: int = Field(2, ge=0, description="times Ray re-runs a probe whose worker crashed")
    address: Optional[str] = Field(None, description="Ray cluster address; null = start a local Ray")


class PlanConfig(_Section):
    """`gts plan`: probe results -> similarity -> groups -> MoE layers -> plan.json."""

    probes: Optional[str] = Field(None, description="probe store directory (<run>/probes)")
    deviations: Optional[str] = Field(
        None, description="instead of probes: a JSON of {lang: {delta_norm_ffn: [...], delta_norm_att: [...]}} "
                          "(layer selection only; groups then come from --groups-map)")
    languages: Optional[list[str]] = Field(None, description="languages to plan for; null = every probed one")
    method: Literal["balanced", "balanced-exhaustive", "balanced-greedy", "agglomerative", "map"] = Field(
        "balanced", description="grouping: the paper's balanced greedy (exhaustive for small n), average-linkage "
                                "agglomerative, or a given map")
    k: Optional[int] = Field(None, ge=1, description="number of groups (experts); agglomerative: null = best silhouette")
    threshold: Optional[float] = Field(None, gt=0, description="agglomerative: cut the tree at this distance")
    groups_map: Optional[str] = Field(None, description="method map: JSON {lang: group}")
    similarity_layers: str = Field("last3", description="layers whose FFN deltas are compared: last3, all, or 0,5,7")
    epsilon: float = Field(0.6, ge=0, le=1, description="MoE layers: normalised mean FFN deviation >= epsilon")
    top_n: Optional[int] = Field(None, ge=1, description="MoE layers: the n layers that moved most (overrides epsilon)")
    plots: bool = Field(True, description="write the PNG figures (the CSV/JSON numbers are always written)")

    @model_validator(mode="after")
    def _sources(self) -> "PlanConfig":
        if (self.probes is None) == (self.deviations is None):
            raise ValueError("give exactly one of --probes (a probe store) or --deviations (a statistics file)")
        if self.method == "map" and not self.groups_map:
            raise ValueError("--method map needs --groups-map")
        if self.method.startswith("balanced") and self.k is None:
            raise ValueError(f"--method {self.method} needs --k, the number of groups")
        if self.deviations is not None and self.method != "map":
            raise ValueError("--deviations has no deltas to compare languages with: use --method map with "
                             "--groups-map, or plan from --probes")
        return self


class SyntheticDataConfig(_Section):
    """`gts data synthetic`: token-level languages with planted families."""

    languages: int = Field(12, ge=1, description="number of languages")
    families: int = Field(3, ge=1, description="number of planted families (parent generators)")
    vocab_size: int = Field(512, ge=8, description="token ids, EOD (0) included")
    successors: int = Field(4, ge=1, description="possible next tokens per token")
    mutation: float = Field(0.1, ge=0, le=1, description="fraction of tokens whose successors a language redraws")
    family_scripts: bool = Field(
        False, description="each family writes its own range of token ids (like families with their own "
                           "alphabets), which makes the families separable from single tokens")
    documents: int = Field(200, ge=3, description="documents per language")
    document_tokens: int = Field(256, ge=2, description="tokens per document, EOD included")
    valid_documents: int = Field(8, ge=1, description="documents per language held out for validation")
    test_documents: int = Field(8, ge=1, description="documents per language held out for testing")
    seed: int = Field(0, ge=0, description="seed of the generators and the documents")

    @model_validator(mode="after")
    def _consistent(self) -> "SyntheticDataConfig":
        if self.families > self.languages:
            raise ValueError(f"families {self.families} is more than languages {self.languages}")
        scripts = self.families if self.family_scripts else 1
        if self.vocab_size - 1 < 2 * self.successors * scripts:
            raise ValueError(f"vocab_size {self.vocab_size} must be more than 2 x successors {self.successors}"
                             + (f" x families {self.families} with family_scripts" if self.family_scripts else ""))
        if self.documents - self.valid_documents - self.test_documents < 1:
            raise ValueError(f"documents {self.documents} leaves no training documents after "
                             f"{self.valid_documents} valid and {self.test_documents} test ones")
        return self


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


# --------------------------------------------------------------------------------------------
# Loading


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.1 wants a dot, users do not write one)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$|"
               r"^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text, turning syntax errors into a one-line GtsError naming ``source``."""
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise GtsError(f"{source}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None


def model_presets() -> list[str]:
    """Names of the model presets shipped with the package (``model: <name>`` in a run config)."""
    root = resources.files("gts_megatron") / "configs" / "models"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _resolve_model(raw: dict, source: str) -> dict:
    """``model: <preset>`` or ``model: {preset: <name>, field: value, ...}`` -> plain fields."""
    model = raw.get("model")
    if isinstance(model, str):
        return {**raw, "model": _load_model_preset(model, source)}
    if isinstance(model, dict) and "preset" in model:
        rest = {k: v for k, v in model.items() if k != "preset"}
        return {**raw, "model": {**_load_model_preset(str(model["preset"]), source), **rest}}
    return raw


def _load_model_preset(name: str, source: str) -> dict:
    if name not in model_presets():
        raise GtsError(f"{source}: model: unknown preset {name!r}; valid presets: {', '.join(model_presets())}")
    text = (resources.files("gts_megatron") / "configs" / "models" / f"{name}.yaml").read_text()
    return parse_yaml(text, f"preset {name}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.field=value`` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise GtsError(f"override {item!r}: expected section.field=value, e.g. train.steps=5")
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise GtsError(f"override {item!r}: {parts[0]} is not a section")
        section[parts[1]] = parse_yaml(value, f"override {item!r}")
    return raw


def _describe(error: dict, source: str) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        section: Any = RunConfig
        for part in error["loc"][:-1]:
            section = section.model_fields[part].annotation if part in section.model_fields else None
            if section is None:
                break
        valid = ", ".join(section.model_fields) if section is not None else ""
        return f"{source}: unknown field {loc}" + (f"; valid fields: {valid}" if valid else "")
    msg = error["msg"].removeprefix("Value error, ")
    got = "" if error["type"] == "value_error" else f" (got {error.get('input')!r})"
    return f"{source}: {loc}: {msg}{got}"


def build_config(raw: Any, source: str) -> RunConfig:
    """Validate a raw dict into a RunConfig; the first problem becomes a one-line GtsError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GtsError(f"{source}: expected a mapping with sections model, parallel, train, data")
    raw = _resolve_model(dict(raw), source)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise GtsError(_describe(exc.errors()[0], source)) from None


def load_config(path: Optional[str | Path], overrides: list[str] = ()) -> RunConfig:
    """Read a run config from YAML (or the defaults when ``path`` is None) plus overrides."""
    source = str(path) if path is not None else "defaults"
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise GtsError(f"config file {p} does not exist")
        raw = parse_yaml(p.read_text(), source) or {}
    if overrides:
        if not isinstance(raw, dict):
            raise GtsError(f"{source}: expected a mapping with sections model, parallel, train, data")
        raw = apply_overrides(_resolve_model(dict(raw), source), list(overrides))
        source = f"{source} (with overrides)"
    return build_config(raw, source)


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML, round-trippable through :func:`load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields() -> str:
    """Every field of every section with its type, default and meaning (``gts config show``)."""
    lines = []
    for name, field in RunConfig.model_fields.items():
        section = field.annotation
        lines.append(f"{name}:  # {section.__doc__.strip().splitlines()[0]}")
        for fname, f in section.model_fields.items():
            default = f.get_default(call_default_factory=True)
            lines.append(f"  {fname}: {yaml.safe_dump(default).strip().removesuffix('...').strip()}"
                         f"  # {f.description}")
    return "\n".join(lines)


def build_options(section: type[_Section], values: dict) -> _Section:
    """Validate a command's options (given as --flags) into ``section``; the first problem
    becomes a one-line GtsError naming the flag."""
    try:
        return section.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = f"--{str(error['loc'][0]).replace('_', '-')}: " if error["loc"] else ""
        got = "" if error["type"] == "value_error" else f" (got {error.get('input')!r})"
        raise GtsError(f"{flag}{error['msg'].removeprefix('Value error, ')}{got}") from None
