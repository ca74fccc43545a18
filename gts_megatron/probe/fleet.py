"""`gts probe`: the probe fleet on Ray, one task per language.

A local Ray by default (``ray.init`` starts one on this machine, bound to 127.0.0.1), or an
existing cluster by address (also reachable through ``ray job submit``). Each task reserves its
CPUs/GPUs, probes one language and writes its result into the store itself, atomically, as it
finishes; the driver reports progress as results arrive. A rerun skips languages whose stored
result has the same inputs, so a killed driver loses only the probes in flight. Ray re-runs a
task whose worker died (``retries``); a language that fails for good is reported with its
traceback and the others go on.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Optional

from gts_megatron.config import ProbeConfig
from gts_megatron.errors import GtsError
from gts_megatron.probe.run import base_model, probe_inputs
from gts_megatron.data.prepare import available_cores

CONNECT_TIMEOUT_S = 10
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its task names


def _inject_fault(language: str, store: str) -> None:
    """Fault injection for the fleet's own tests: GTS_PROBE_FAULT=crash:<lang> kills the worker
    on the language's first attempt; raise:<lang> fails it with an exception every time."""
    kind, _, target = os.environ.get("GTS_PROBE_FAULT", "").partition(":")
    if target != language:
        return
    if kind == "raise":
        raise RuntimeError(f"injected failure while probing {language}")
    marker = Path(store) / f".crashed-{language}"
    if kind == "crash" and not marker.exists():
        marker.touch()
        os._exit(1)  # the worker process dies; Ray notices and retries the task


def _probe_task(cfg_json: str, language: str, store: str) -> dict:
    """Runs in a Ray worker: one probe, its result written to the store."""
    from gts_megatron.probe.run import run_probe

    _inject_fault(language, store)
    started = time.perf_counter()
    run_probe(ProbeConfig.model_validate_json(cfg_json), language, Path(store))
    return {"language": language, "seconds": time.perf_counter() - started}


def finished(store: Path, language: str, inputs: dict) -> bool:
    """True if the store holds a complete result for ``language`` made from ``inputs``."""
    path = store / f"{language}.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("inputs") == inputs
    except ValueError:
        return False  # a damaged result is probed again


def check_reachable(address: str) -> None:
    """Refuse an address whose Ray head does not answer within a few seconds (ray.init would wait)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise GtsError(f"--address {address!r}: expected host:port (the Ray head's GCS port), ray://host:port, "
                       f"auto or local")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise GtsError(f"--address {address}: no Ray head answers there ({exc.strerror or exc}); "
                       f"start one with `ray start --head` or leave --address out for a local Ray") from None


def _connect(cfg: ProbeConfig, cpus: int) -> bool:
    """Join or start Ray; True if this call started it (and so must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if cfg.address:
        check_reachable(cfg.address)
        if cfg.address.removeprefix("ray://").startswith(("127.", "localhost")):
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a loopback head: stay there
        ray.init(address=cfg.address, log_to_driver=False)
    else:
        # a one-machine cluster that listens on 127.0.0.1 only: without this Ray binds its GCS,
        # raylet and workers to every interface (Ray 2.60); "local" never joins a stale cluster
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return True


def _run_in_process(cfg: ProbeConfig, todo: list[str], store: Path, status: dict, log) -> dict[str, str]:
    """The probes one after another in this process (a Slurm array task), without Ray."""
    if cfg.engine == "deepspeed" and len(todo) > 1:
        raise GtsError(f"--executor process with --engine deepspeed probes one language per process (DeepSpeed "
                       f"keeps global state); give one of {', '.join(todo)} with --languages")
    store.mkdir(parents=True, exist_ok=True)
    for done, lang in enumerate(todo, 1):
        begun = time.perf_counter()
        _probe_task(cfg.model_dump_json(), lang, str(store))
        status[lang] = "done"
        log(f"  [{done}/{len(todo)}] {lang} done ({time.perf_counter() - begun:.0f} s)")
    return status


def _checked_languages(cfg: ProbeConfig, model) -> list[str]:
    """The languages to probe, once the data, the batch and the pipeline split fit the base model."""
    from gts_megatron.data.mixture import check_data

    _, languages = check_data(Path(cfg.data), cfg.languages, cfg.seq_length, model.vocab_size)
    if cfg.global_batch_size % cfg.micro_batch_size:
        raise GtsError(f"--global-batch-size {cfg.global_batch_size} is not a multiple of --micro-batch-size "
                       f"{cfg.micro_batch_size}")
    if model.num_layers % cfg.pipeline:
        raise GtsError(f"--pipeline {cfg.pipeline} does not divide the base's {model.num_layers} layers; choose a "
                       f"pipeline size that does")
    return languages


def run_fleet(cfg: ProbeConfig, store: Path, log=print, timings: Optional[dict] = None) -> dict[str, str]:
    """Probe every language not yet in ``store``; returns language -> "done" | "skipped" | error.
    ``timings``, if given, receives the seconds spent connecting to Ray and each probe's own time."""
    import ray


    _, meta, model = base_model(cfg)
    languages = _checked_languages(cfg, model)
    inputs = probe_inputs(cfg, meta)
    status = {lang: "skipped" for lang in languages if finished(store, lang, inputs)}
    todo = [lang for lang in languages if lang not in status]
    if status:
        log(f"{len(status)} of {len(languages)} languages already probed with these inputs; skipping them")
    if not todo:
        return status
    if cfg.executor == "process":
        return _run_in_process(cfg, todo, store, status, log)
    connecting = time.perf_counter()
    started_ray = _connect(cfg, available_cores())
    if timings is not None:
        timings.update(connect_s=time.perf_counter() - connecting, probe_s={})
    try:
        store.mkdir(parents=True, exist_ok=True)
        # DeepSpeed keeps process groups in module globals that outlive a probe: it gets a fresh
        # worker process per probe; megatron probes tear their state down and reuse workers
        task = ray.remote(num_cpus=cfg.cpus_per_probe * cfg.pipeline, num_gpus=cfg.gpus_per_probe * cfg.pipeline,
                          max_retries=cfg.retries,
                          retry_exceptions=False, max_calls=1 if cfg.engine == "deepspeed" else 0)(_probe_task)
        pending = {task.remote(cfg.model_dump_json(), lang, str(store)): lang for lang in todo}
        log(f"probing {len(todo)} languages on Ray ({cfg.cpus_per_probe} CPU each, {cfg.steps} steps)")
        begun = time.perf_counter()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            lang = pending.pop(ready[0])
            try:
                seconds = ray.get(ready[0])["seconds"]
                status[lang] = "done"
                if timings is not None:
                    timings["probe_s"][lang] = seconds
                log(f"  [{len(todo) - len(pending)}/{len(todo)}] {lang} done ({time.perf_counter() - begun:.0f} s)")
            except ray.exceptions.RayError as exc:
                detail = _ANSI.sub("", str(exc))
                status[lang] = detail
                header = "Traceback (in the Ray worker):\n" if isinstance(exc, ray.exceptions.RayTaskError) else ""
                log(f"  [{len(todo) - len(pending)}/{len(todo)}] {lang} FAILED:\n{header}{detail}")
    finally:
        if started_ray:
            ray.shutdown()
    failed = [lang for lang, s in status.items() if s not in ("done", "skipped")]
    if failed:
        raise GtsError(f"{len(failed)} probe(s) failed ({', '.join(failed)}), tracebacks above; the other "
                       f"{len(languages) - len(failed)} are stored; run the same command again to retry")
    return status
