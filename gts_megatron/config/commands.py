"""Typed options of the commands that are not training runs (their --flags)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from gts_megatron.config.run import _Section

# the ways `gts plan` can group languages from their similarity (gts_megatron.plan.grouping.by_method)
GroupingMethod = Literal["balanced", "balanced-exhaustive", "balanced-greedy", "agglomerative"]


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
    global_batch_size: int = Field(8, ge=1, description="sequences per step (tokens_per_step overrides it)")
    tokens_per_step: Optional[int] = Field(
        16384, ge=1, description="tokens per optimizer step, accumulated over micro-batches (a multiple of "
                                 "seq_length x micro_batch_size; the paper: ~1M); null = global_batch_size "
                                 "sequences")
    seq_length: int = Field(128, ge=2, description="tokens per sequence")
    delta: Literal["update", "gradient"] = Field(
        "update", description="update: the paper's probe, the weights' change over `steps` AdamW steps; gradient: "
                              "the mean language-model gradient at the base over the same tokens, no step taken "
                              "(Adam's per-weight normalisation lends every weight's noise the same size)")
    sketch_size: int = Field(16384, ge=16, description="CountSketch length per layer (cosines come back to within "
                                                         "about 1/sqrt(size x layers compared))")
    exact: bool = Field(False, description="keep the full FFN deltas instead of sketches (small models)")
    seed: int = Field(1234, ge=0, description="seed of training and of the sketch hash (the same for every language)")
    pipeline: int = Field(1, ge=1, description="pipeline-parallel size of each probe (engine megatron): the probe "
                                               "runs as this many local processes, each holding a share of the "
                                               "layers, for a base too large for one device; the result is the same")
    cpus_per_probe: int = Field(1, ge=1, description="CPUs (threads) each probe process reserves on Ray")
    gpus_per_probe: float = Field(0, ge=0, description="GPUs each probe process reserves on Ray")
    retries: int = Field(2, ge=0, description="times Ray re-runs a probe whose worker crashed")
    address: Optional[str] = Field(None, description="Ray cluster address; null = start a local Ray")
    executor: Literal["ray", "process"] = Field(
        "ray", description="ray: a fleet of Ray tasks; process: the languages one after another in this "
                           "process, without Ray (what each task of `gts launch probe-array` runs)")


    @model_validator(mode="after")
    def _batch_fits(self) -> "ProbeConfig":
        chunk = self.seq_length * self.micro_batch_size
        if self.tokens_per_step is not None and self.tokens_per_step % chunk:
            raise ValueError(f"tokens_per_step {self.tokens_per_step} is not a multiple of seq_length x "
                             f"micro_batch_size = {chunk}; use {max(1, round(self.tokens_per_step / chunk)) * chunk}")
        if self.delta == "gradient" and self.engine != "megatron":
            raise ValueError("delta gradient needs engine megatron")
        if self.pipeline > 1 and self.engine != "megatron":
            raise ValueError(f"pipeline {self.pipeline} needs engine megatron (DeepSpeed's probe shards with ZeRO "
                             f"instead)")
        return self

    @property
    def sequences_per_step(self) -> int:
        """Sequences per optimizer step: from tokens_per_step when set."""
        if self.tokens_per_step is None:
            return self.global_batch_size
        return self.tokens_per_step // self.seq_length


class StabilityConfig(ProbeConfig):
    """`gts bench stability`: the probes of ProbeConfig once per seed, and the seeds' plans compared."""

    seeds: list[int] = Field([1, 2, 3], description="probe seeds to compare (comma-separated, at least two)")
    k: int = Field(4, ge=1, description="groups of each seed's plan")
    methods: list[GroupingMethod] = Field(
        ["balanced"], description="grouping methods to compare on the same probes (comma-separated, as `gts plan "
                                  "--method`; agglomerative is cut into k groups)")
    epsilon: float = Field(0.6, gt=0, le=1, description="the plan's layer-selection threshold (as `gts plan`)")
    out: str = Field("runs/stability", description="one probe store per seed, and stability.json")

    @model_validator(mode="after")
    def _two_distinct_seeds(self) -> "StabilityConfig":
        if len(set(self.seeds)) < 2 or min(self.seeds) < 0:
            raise ValueError(f"--seeds {','.join(map(str, self.seeds))}: give at least two distinct seeds >= 0")
        return self


class PlanConfig(_Section):
    """`gts plan`: probe results -> similarity -> groups -> MoE layers -> plan.json."""

    probes: Optional[str] = Field(None, description="probe store directory (<run>/probes)")
    deviations: Optional[str] = Field(
        None, description="instead of probes: a JSON of {lang: {delta_norm_ffn: [...], delta_norm_att: [...]}} "
                          "(layer selection only; groups then come from --groups-map)")
    languages: Optional[list[str]] = Field(None, description="languages to plan for; null = every probed one")
    method: Literal[GroupingMethod, "map"] = Field(
        "balanced", description="grouping: the paper's balanced greedy (exhaustive for small n), average-linkage "
                                "agglomerative, or a given map")
    k: Optional[int] = Field(None, ge=1, description="number of groups (experts); agglomerative: null = best silhouette")
    threshold: Optional[float] = Field(None, gt=0, description="agglomerative: cut the tree at this distance")
    groups_map: Optional[str] = Field(None, description="method map: JSON {lang: group}")
    similarity_layers: str = Field("last3", description="layers whose FFN deltas are compared: last3, all, or 0,5,7")
    epsilon: float = Field(0.6, ge=0, le=1, description="MoE layers: normalised mean FFN deviation >= epsilon")
    top_n: Optional[int] = Field(None, ge=1, description="MoE layers: the n layers that moved most (overrides epsilon)")
    moe_layers: Optional[list[int]] = Field(
        None, min_length=1, description="MoE layers named by index, e.g. 2 or 1,3 (overrides epsilon and top-n; "
                                        "the deviation profile is still measured and drawn)")
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
        if self.moe_layers is not None:
            if self.top_n is not None:
                raise ValueError("give --top-n or --moe-layers, not both")
            if min(self.moe_layers) < 0 or len(set(self.moe_layers)) != len(self.moe_layers):
                raise ValueError(f"--moe-layers {self.moe_layers}: layer indices must be distinct and >= 0")
        return self


class ExpandConfig(_Section):
    """`gts expand`: how the dense checkpoint becomes the planned MoE model (its inputs aside)."""

    seed: int = Field(1234, description="seed of the routers' initialisation")
    optimizer_state: bool = Field(
        False, description="also expand the dense run's Adam moments (each expert continues its MLP's), for "
                           "training that continues them with train.init_optimizer=true")


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


class MechanismConfig(_Section):
    """`gts mechanism`: dense, GtS and random groups on planted families whose grammars conflict."""

    languages: int = Field(8, ge=2, description="synthetic languages")
    families: int = Field(4, ge=2, description="planted families (each its own successor table); the plan's k")
    documents: int = Field(200, ge=20, description="documents per language")
    base_steps: int = Field(100, ge=1, description="dense base training steps")
    arm_steps: int = Field(200, ge=2, description="training steps of every arm")
    learned_steps: int = Field(60, ge=0, description="of arm_steps, the last ones in stage 2 (learned routing)")
    train_seeds: list[int] = Field([1, 2, 3], min_length=1, description="every arm once per training seed")
    router_loss_weight: float = Field(
        0.3, ge=0, description="the GtS arms' moe.router_loss_weight (at the paper's 1.28 GtS scores 8.32 here "
                               "against 6.76, with routers no more accurate: docs/method.md section 4)")
    max_eval_tokens: int = Field(4096, ge=2, description="held-out tokens scored per language")

    @model_validator(mode="after")
    def _consistent(self) -> "MechanismConfig":
        if self.families > self.languages:
            raise ValueError(f"families {self.families} is more than languages {self.languages}")
        if self.learned_steps >= self.arm_steps:
            raise ValueError(f"learned_steps {self.learned_steps} leaves stage 1 no steps of {self.arm_steps}")
        return self


class EvalWindows(_Section):
    """How held-out text is scored: sliding windows over each language's documents, joined."""

    split: Literal["test", "valid"] = Field("test", description="held-out split to score")
    window: Optional[int] = Field(None, ge=2, description="tokens per window; null = the model's max_seq_length")
    stride: Optional[int] = Field(
        None, ge=1, description="tokens between window starts (each token is scored once, in the first window "
                                "that reaches it, with the context before it); null = window/2")
    eval_batch_size: int = Field(8, ge=1, description="windows per forward pass")
    max_tokens: Optional[int] = Field(None, ge=2, description="score at most this many tokens per language "
                                                             "(the first ones); null = all")

    @model_validator(mode="after")
    def _stride_fits(self) -> "EvalWindows":
        if self.window is not None and self.stride is not None and self.stride > self.window:
            raise ValueError(f"--stride {self.stride} is longer than --window {self.window}: tokens between "
                             f"windows would never be scored")
        return self


class EvalConfig(EvalWindows):
    """`gts eval`: per-language perplexity of a dense or GtS checkpoint on held-out text."""

    checkpoint: str = Field(description="a checkpoint, or a run or checkpoints directory (its latest)")
    data: str = Field(description="data directory from `gts data prepare`, tokenized like the model's data")
    languages: Optional[list[str]] = Field(None, description="languages to score; null = every one in the data")
    routing: Literal["auto", "group", "learned"] = Field(
        "auto", description="GtS models: group (each language to its group's expert), learned (the routers "
                            "decide), auto (the routing the checkpoint was trained with)")
    unknown_language: Literal["error", "nearest"] = Field(
        "error", description="group routing, a language the plan lacks: error, or nearest (the group whose "
                             "expert gives it the lowest perplexity on the valid split)")


ARMS = ("dense", "gts", "random", "per-language", "upcycle")


class ExperimentConfig(EvalWindows):
    """`gts experiment`: the paper's comparison, every arm trained on the same tokens from one dense base."""

    base: str = Field(description="dense base checkpoint (or a checkpoints or run directory: its latest)")
    data: str = Field(description="data directory the arms train and are evaluated on")
    plan: str = Field(description="the GtS plan.json from `gts plan` (its languages and MoE layers)")
    arms: list[Literal["dense", "gts", "random", "per-language", "upcycle"]] = Field(
        list(ARMS), min_length=1,
        description="dense: continued training; gts: the plan's groups; random: random groups of the same "
                    "sizes; per-language: one expert per language; upcycle: learned top-k routing over k "
                    "copies of the MLP in every layer")
    learned_steps: int = Field(0, ge=0, description="GtS arms: of train.steps, the last ones in stage 2 "
                                                   "(learned routing); 0 = stage 1 only")
    upcycle_experts: Optional[int] = Field(None, ge=2, description="upcycle: experts per layer; null = the plan's")
    seed: int = Field(1234, ge=0, description="seed of the random grouping")
    train_seeds: Optional[list[int]] = Field(
        None, description="training seeds: one experiment per seed in <run-dir>/seed-<s> (its train.seed and "
                          "random grouping), then each arm's mean and std; null = one run")


class AdaptConfig(EvalWindows):
    """`gts adapt`: a new language as a new expert (the paper's step 9)."""

    checkpoint: str = Field(description="the GtS model to extend (a checkpoint, or a run or checkpoints directory)")
    lang: str = Field(description="the new language (its code in --data)")
    data: str = Field(description="data directory with the new language, tokenized like the model's data")
    eval_data: Optional[str] = Field(None, description="data directory of the old languages; null = --data")
    steps: int = Field(100, ge=1, description="training steps on the new language")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (cosine decay to lr/10)")
    router_loss_weight: float = Field(1.28, ge=0, description="weight of the router classification loss")
    micro_batch_size: int = Field(4, ge=1, description="sequences per forward pass")
    global_batch_size: int = Field(8, ge=1, description="sequences per step")
    seq_length: int = Field(128, ge=2, description="tokens per training sequence")
    seed: int = Field(1234, ge=0, description="seed of training and data order")


class ImportHfConfig(_Section):
    """`gts import-hf`: a Hugging Face Llama/Mistral/Qwen2 folder -> a megatron dist-checkpoint."""

    source: str = Field(description="HF checkpoint folder: config.json, model.safetensors or shards + index, tokenizer")
    out: str = Field(description="checkpoint folder to write (iter_0000000, latest, config.yaml, hf/)")
    dtype: Optional[Literal["fp32", "bf16", "fp16"]] = Field(
        None, description="parameter dtype with --no-verify (default: the folder's torch_dtype); checked imports "
                          "are fp32 (train in bf16 with --set model.dtype=bf16)")
    verify: bool = Field(True, description="compare logits with transformers (which holds a second fp32 copy of "
                                           "the model)")
    force: bool = Field(False, description="replace a non-empty --out")
    tolerance: float = Field(1e-4, gt=0, description="largest logit difference from transformers that is accepted")

    @model_validator(mode="after")
    def _checked_imports_are_fp32(self) -> "ImportHfConfig":
        if self.verify and self.dtype not in (None, "fp32"):
            raise ValueError(f"--dtype {self.dtype}: the check against transformers compares fp32 logits; import "
                             f"in fp32 and train with --set model.dtype={self.dtype}, or pass --no-verify")
        return self


class ExportHfConfig(_Section):
    """`gts export-hf`: a checkpoint -> a Hugging Face folder (its family's format, or GtsForCausalLM)."""

    checkpoint: str = Field(description="checkpoint (or a checkpoints folder: its latest)")
    out: str = Field(description="HF folder to write")
    architecture: Optional[str] = Field(
        None, description="family to write (default: the imported one; else Qwen2 with QKV biases, Llama without)")
    tokenizer_dir: Optional[str] = Field(
        None, description="copy tokenizer files from here (default: the import's hf/ folder)")
    force: bool = Field(False, description="replace a non-empty --out")
    tolerance: float = Field(1e-4, gt=0, description="largest logit difference of the GtS export's self-check")
