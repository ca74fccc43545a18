"""`gts eval`: per-language perplexity of a checkpoint on held-out text (sliding windows)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.config import EvalConfig, ParallelConfig
from gts_megatron.data.manifest import load_manifest, load_tokenizer
from gts_megatron.errors import GtsError
from gts_megatron.contracts.trained import TrainedModel
from gts_megatron.engine.checkpoint import load_trained
from gts_megatron.eval.windows import Windows, heldout_tokens, sliding_windows
from gts_megatron.model.gts import ROUTING
from gts_megatron.model.sizes import parameter_counts
from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime


def score_windows(model: torch.nn.Module, windows: Windows, batch_size: int, group: Optional[int],
                  device: torch.device, bar: Optional[tqdm] = None) -> tuple[float, int]:
    """(summed negative log-likelihood, scored tokens) of ``windows``; under group routing every
    token goes to ``group``'s expert."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            inputs = windows.inputs[first:first + batch_size].to(device)
            targets = windows.targets[first:first + batch_size].to(device)
            scored = windows.scored[first:first + batch_size].to(device)
            ROUTING.begin(None if group is None else torch.full((len(inputs),), group, device=device))
            positions = torch.arange(inputs.shape[1], device=device).expand_as(inputs)
            logits = model(input_ids=inputs, position_ids=positions, attention_mask=None)
            losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            nll += float(losses[scored.flatten()].sum())
            count += int(scored.sum())
            if bar is not None:
                bar.update(len(inputs))
    ROUTING.begin(None)
    return nll, count


def _language_groups(trained: TrainedModel, routing: Optional[str], languages: list[str],
                     unknown: str) -> dict[str, Optional[int]]:
    """language -> group under group routing (None: to be chosen as the nearest group)."""
    if routing != "group":
        return {lang: None for lang in languages}
    missing = [lang for lang in languages if lang not in trained.plan.language_to_group]
    if missing and unknown == "error":
        raise GtsError(f"{', '.join(missing)} not in the plan of {trained.path} (languages "
                       f"{', '.join(trained.plan.languages)}); under group routing a language needs a group: "
                       f"pass --unknown-language nearest, --routing learned, or --languages without it")
    return {lang: trained.plan.language_to_group.get(lang) for lang in languages}


def window_sizes(cfg: EvalConfig, trained: TrainedModel) -> tuple[int, int]:
    """(window, stride) for ``trained``: the defaults filled in and checked against the model."""
    window = cfg.window or trained.config.max_seq_length
    if window > trained.config.max_seq_length:
        raise GtsError(f"--window {window} exceeds the model's max_seq_length {trained.config.max_seq_length}")
    return window, cfg.stride or max(1, window // 2)


def evaluate_checkpoint(cfg: EvalConfig, out: Optional[Path] = None, log=print) -> dict:
    """Score every chosen language of ``cfg.data`` with ``cfg.checkpoint``; write the result JSON to
    ``out`` (atomically) and print a table. Runs in one process."""
    trained = TrainedModel.open(Path(cfg.checkpoint))
    data_dir = Path(cfg.data)
    manifest = load_manifest(data_dir)
    load_tokenizer(data_dir, manifest)
    trained.check_tokens(data_dir, manifest)
    languages = list(cfg.languages or manifest.languages)
    absent = [lang for lang in languages if lang not in manifest.languages]
    if absent:
        raise GtsError(f"--languages: {', '.join(absent)} not in {data_dir}; it has {', '.join(manifest.languages)}")
    routing = trained.routing(cfg.routing)
    groups = _language_groups(trained, routing, languages, cfg.unknown_language)
    window, stride = window_sizes(cfg, trained)
    pad = manifest.tokenizer.eod

    def windows_of(lang: str, split: str) -> Windows:
        return sliding_windows(heldout_tokens(data_dir, manifest, lang, split, cfg.max_tokens), window, stride, pad)

    held_out = {lang: windows_of(lang, cfg.split) for lang in languages}
    candidates = {lang: windows_of(lang, "valid") for lang, g in groups.items() if routing == "group" and g is None}
    total, active = parameter_counts(trained.config, trained.plan, trained.topk(routing))
    result = {"checkpoint": str(trained.path), "step": trained.step, "stage": trained.stage, "routing": routing,
              "data": str(data_dir), "split": cfg.split, "window": window, "stride": stride,
              "parameters": {"total": total, "active": active}, "languages": {}}
    runtime = init_runtime(ParallelConfig(), 1234)
    try:
        model = load_trained(trained, routing)
        work = sum(len(w) for w in held_out.values()) + sum(len(w) for w in candidates.values()) * (
            trained.plan.num_groups if candidates else 0)
        with tqdm(total=work, desc="eval", unit="window", disable=not sys.stderr.isatty(), leave=False) as bar:
            for lang, windows in held_out.items():
                entry: dict = {}
                group = groups[lang]
                if lang in candidates:  # nearest group: the lowest perplexity on the valid split
                    scores = {}
                    for g in range(trained.plan.num_groups):
                        nll, count = score_windows(model, candidates[lang], cfg.eval_batch_size, g, runtime.device, bar)
                        scores[g] = math.exp(nll / count)
                    group = min(scores, key=scores.get)
                    entry["nearest_group"] = {"valid_perplexity": scores, "chosen": group}
                nll, count = score_windows(model, windows, cfg.eval_batch_size, group, runtime.device, bar)
                entry.update(tokens=count, loss=nll / count, perplexity=math.exp(nll / count))
                if group is not None:
                    entry.update(group=group, expert=trained.plan.group_to_expert[group])
                result["languages"][lang] = entry
    finally:
        shutdown_runtime()
    ppl = [e["perplexity"] for e in result["languages"].values()]
    result["mean_perplexity"] = sum(ppl) / len(ppl)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    log(format_table(result))
    return result


EVAL_FIELDS = ("split", "window", "stride", "eval_batch_size", "max_tokens")


def evaluate_cached(checkpoint: Path, data: str, languages: list[str], windows, out: Path, log=print,
                    **options) -> dict:
    """``evaluate_checkpoint`` with the window settings of ``windows`` (and EvalConfig ``options``:
    routing, unknown_language), reusing ``out`` when it holds the same evaluation."""
    settings = {"data": data, "languages": list(languages), **{k: getattr(windows, k) for k in EVAL_FIELDS},
                **options}
    cfg = EvalConfig(**settings, checkpoint=str(checkpoint))
    key = {"checkpoint": TrainedModel.open(Path(checkpoint)).identity(), **settings}
    if out.is_file():
        cached = json.loads(out.read_text())
        if cached.get("key") == key:
            log(f"{out}: evaluation up to date")
            return cached
    result = evaluate_checkpoint(cfg, None, log=log)
    result["key"] = key
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return result


def format_table(result: dict) -> str:
    """A per-language table of an evaluation result, with the mean."""
    routing = result["routing"] or "dense"
    lines = [f"{result['checkpoint']} (step {result['step']}, {routing}), {result['split']} split, "
             f"window {result['window']} stride {result['stride']}",
             f"{'lang':<8}{'tokens':>9}{'loss':>8}{'ppl':>10}  expert"]
    for lang, e in result["languages"].items():
        expert = "" if "expert" not in e else f"{e['expert']}" + (" (nearest)" if "nearest_group" in e else "")
        lines.append(f"{lang:<8}{e['tokens']:>9}{e['loss']:>8.3f}{e['perplexity']:>10.2f}  {expert}")
    lines.append(f"{'mean':<8}{'':>9}{'':>8}{result['mean_perplexity']:>10.2f}")
    return "\n".join(lines)
