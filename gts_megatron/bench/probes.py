"""`gts bench probes`: the fleet's overhead and the size of what a probe leaves behind.

The fleet runs N probes on a fresh local Ray with ``slots`` = cores / cpus-per-probe at a time.
Its ideal wall time is ceil(N / slots) x one probe; the overhead is the excess. One probe is
measured two ways in the same run: alone in this process with the machine to itself, and inside
the fleet (the task's own time, while other probes share the machine). Against the in-fleet
time the overhead is what the fleet adds (Ray start-up, worker start-up, scheduling), reported
with and without starting the local Ray (which a user of an existing cluster does not pay);
against the lone time it also counts what parallel probes cost each other on shared cores.
Result bytes per language are the probe's JSON plus its sketches: a fixed number of floats per
layer, whatever the model's width.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from gts_megatron.artifacts import scratch_directory
from gts_megatron.bench import machine, quiet
from gts_megatron.config import BenchProbesConfig, ProbeConfig, SyntheticDataConfig, build_config
from gts_megatron.data.families import write_synthetic
from gts_megatron.data.prepare import available_cores



def bench_probes(options: BenchProbesConfig) -> dict:
    """Fleet wall time against ceil(N / slots) x one probe, and bytes stored per language."""
    preset, languages, steps = options.preset, options.languages, options.steps
    seq_length, cpus_per_probe = options.seq_length, options.cpus_per_probe
    work_dir = Path(options.work_dir) if options.work_dir else None
    from gts_megatron.base.pretrain import pretrain
    from gts_megatron.probe.fleet import run_fleet
    from gts_megatron.probe.run import run_probe

    with scratch_directory("bench", work_dir) as root:
        base_cfg = build_config({"model": preset, "train": {"steps": 1, "seq_length": seq_length, "eval_samples": 0,
                                                            "tensorboard": False}}, "gts bench probes")
        write_synthetic(SyntheticDataConfig(languages=languages, families=2, vocab_size=base_cfg.model.vocab_size,
                                            documents=40, document_tokens=2 * seq_length), root / "data", log=quiet)
        pretrain(base_cfg, root / "base")  # an initialised base checkpoint to probe from
        cfg = ProbeConfig(base=str(root / "base" / "checkpoints"), data=str(root / "data"), steps=steps,
                          seq_length=seq_length, lr=1e-3, cpus_per_probe=cpus_per_probe,
                          tokens_per_step=8 * seq_length)
        started = time.perf_counter()
        run_probe(cfg, "syn00", root / "alone")
        one = time.perf_counter() - started
        started, timings = time.perf_counter(), {}
        run_fleet(cfg, root / "fleet", log=quiet, timings=timings)
        fleet = time.perf_counter() - started
        stored = sum(p.stat().st_size for p in (root / "fleet").glob("syn00.*"))
    slots = max(1, available_cores() // cpus_per_probe)
    waves = math.ceil(languages / slots)
    in_fleet = sum(timings["probe_s"].values()) / len(timings["probe_s"])
    ideal = waves * in_fleet
    return {"benchmark": "probes", "preset": preset, "num_layers": base_cfg.model.num_layers,
            "hidden_size": base_cfg.model.hidden_size, "languages": languages, "slots": slots, "steps": steps,
            "tokens_per_step": 8 * seq_length, "one_probe_alone_s": round(one, 2),
            "one_probe_in_fleet_s": round(in_fleet, 2), "ray_start_s": round(timings["connect_s"], 2),
            "fleet_s": round(fleet, 2), "ideal_s": round(ideal, 2), "overhead": round(fleet / ideal - 1, 3),
            "overhead_without_ray_start": round((fleet - timings["connect_s"]) / ideal - 1, 3),
            "overhead_against_alone": round(fleet / (waves * one) - 1, 3), "bytes_per_language": stored,
            "bytes_per_layer": round(stored / base_cfg.model.num_layers), "sketch_size": cfg.sketch_size,
            **machine()}


def report(result: dict) -> str:
    """A readable summary of :func:`bench_probes`'s result, then the result as JSON."""
    return "\n".join([
        f"{result['languages']} probes of the {result['preset']} model ({result['steps']} steps) on {result['slots']} "
        f"slots: fleet {result['fleet_s']:.1f} s vs ideal {result['ideal_s']:.1f} s (= ceil(N/slots) x "
        f"{result['one_probe_in_fleet_s']:.1f} s, one probe's own time in the fleet): overhead "
        f"{100 * result['overhead']:.0f}%, {100 * result['overhead_without_ray_start']:.0f}% without the "
        f"{result['ray_start_s']:.1f} s Ray start (goal <= 15%)",
        f"one probe alone with the machine to itself: {result['one_probe_alone_s']:.1f} s "
        f"(fleet vs ceil(N/slots) x that: {100 * result['overhead_against_alone']:.0f}%)",
        f"stored per language: {result['bytes_per_language']} bytes ({result['bytes_per_layer']} per layer; "
        f"{result['sketch_size']} floats per layer whatever the width)",
        json.dumps(result)])
