"""`gts plan`: probe results -> similarity -> groups -> MoE layers -> plan.json, figures, numbers.

Everything goes to ``<out>/`` (plan.json, similarity.csv/png, deviations.json/png,
groups.json/png), built in a temporary directory that replaces ``<out>`` when complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from gts_megatron.artifacts import file_sha256, staged_directory
from gts_megatron.config import ModelConfig, MoEConfig, PlanConfig
from gts_megatron.errors import GtsError
from gts_megatron.artifacts import atomic_write_text
from gts_megatron.plan import grouping, plots
from gts_megatron.plan.families import family_agreement
from gts_megatron.plan.layers import deviation_matrix, normalised_profile, select_layers
from gts_megatron.contracts.plan import ROUTING_CHECKSUM, Plan, write_plan
from gts_megatron.model.sizes import count_parameters, moe_parameter_counts
from gts_megatron.plan.similarity import distance_from_similarity, similarity_from_store, similarity_layers
from gts_megatron.probe.store import read_probe, stored_languages


def _load_json(path: Path, what: str):
    if not path.is_file():
        raise GtsError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GtsError(f"{path}: not valid JSON ({exc})") from None


def load_deviations(cfg: PlanConfig) -> tuple[list[str], dict, dict, dict, Optional[dict]]:
    """(languages, FFN deviations, attention deviations, input checksums, probed model config)."""
    if cfg.deviations:
        path = Path(cfg.deviations)
        stats = _load_json(path, "deviation statistics")
        if not isinstance(stats, dict) or not all(isinstance(v, dict) and "delta_norm_ffn" in v for v in stats.values()):
            raise GtsError(f"{path}: expected {{lang: {{delta_norm_ffn: [...], delta_norm_att: [...]}}}}")
        languages = cfg.languages or sorted(stats)
        missing = [lang for lang in languages if lang not in stats]
        if missing:
            raise GtsError(f"{path}: no deviations for {', '.join(missing)}")
        return (languages, {lang: stats[lang]["delta_norm_ffn"] for lang in languages},
                {lang: stats[lang].get("delta_norm_att", []) for lang in languages}, {str(path): file_sha256(path)}, None)
    store = Path(cfg.probes)
    if not store.is_dir():
        raise GtsError(f"probe store {store} does not exist; run `gts probe` first")
    languages = cfg.languages or stored_languages(store)
    if len(languages) < 2:
        raise GtsError(f"{store}: {len(languages)} probed language(s); a plan needs at least 2")
    results = {lang: read_probe(store, lang) for lang in languages}  # a missing probe is named here
    checksums = {f"{lang}.json": file_sha256(store / f"{lang}.json") for lang in languages}
    checksums.update({f"{lang}.safetensors": file_sha256(store / f"{lang}.safetensors") for lang in languages
                      if (store / f"{lang}.safetensors").is_file()})
    model = next(iter(results.values())).model or None
    return (languages, {lang: r.delta_norm_ffn for lang, r in results.items()},
            {lang: r.delta_norm_att for lang, r in results.items()}, checksums, model)


def _parse_layers(text: str):
    if text in ("last3", "all"):
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GtsError(f"--similarity-layers {text!r}: expected last3, all, or a list like 0,5,7") from None


def group(cfg: PlanConfig, languages: list[str], distance: Optional[np.ndarray]) -> list[list[int]]:
    """Groups (lists of language indices) by ``cfg.method``."""
    if cfg.method == "map":
        mapping = _load_json(Path(cfg.groups_map), "groups map")
        if not isinstance(mapping, dict):
            raise GtsError(f"{cfg.groups_map}: expected an object {{lang: group}}")
        return grouping.from_map(mapping, languages, cfg.groups_map)
    return grouping.by_method(cfg.method, distance, cfg.k, cfg.threshold)


def make_plan(cfg: PlanConfig, out: Path, log=print) -> Plan:
    """Compute the plan and write it with its figures into ``out``."""
    languages, ffn, attention, checksums, model = load_deviations(cfg)
    matrix = deviation_matrix(ffn)
    profile = normalised_profile(matrix)
    rule_epsilon = None if cfg.top_n or cfg.moe_layers else cfg.epsilon  # drawn only when it chose the layers
    moe_layers = select_layers(profile, rule_epsilon, cfg.top_n, cfg.moe_layers)
    if not moe_layers:
        raise GtsError(f"no layer reaches --epsilon {cfg.epsilon}; lower it or use --top-n")
    similarity = distance = None
    sketched = bool(cfg.probes) and all((Path(cfg.probes) / f"{lang}.safetensors").is_file() for lang in languages)
    if cfg.method != "map" and not sketched:
        raise GtsError(f"{cfg.probes}: the probes have no FFN sketches to compare languages with; "
                       f"re-run `gts probe`, or group with --method map --groups-map")
    if sketched:
        layers = similarity_layers(_parse_layers(cfg.similarity_layers), matrix.shape[1])
        similarity = similarity_from_store(Path(cfg.probes), languages, layers)
        distance = distance_from_similarity(similarity)
    groups = group(cfg, languages, distance)
    plan = Plan(languages=languages, num_experts=len(groups), group_to_expert=list(range(len(groups))),
                language_to_group={languages[i]: g for g, members in enumerate(groups) for i in members},
                moe_layers=moe_layers,
                inputs={"source": cfg.probes or cfg.deviations, "checksums": checksums,
                        "parameters": cfg.model_dump(mode="json"), "normalised_ffn_deviation": profile.round(6).tolist()})
    # the routing's own checksum: load_plan refuses a plan edited after this (a regrouped language)
    plan = plan.model_copy(update={"inputs": {**plan.inputs, ROUTING_CHECKSUM: plan.sha256()}})
    families = family_agreement(plan.language_to_group)
    with staged_directory(out) as tmp:
        write_plan(tmp / "plan.json", plan)
        atomic_write_text(tmp / "families.json", json.dumps(families, indent=1) + "\n")
        attention_matrix = deviation_matrix(attention, "delta_norm_att") if all(attention.values()) else None
        plots.write_deviation_profile(tmp, matrix, profile, moe_layers, rule_epsilon,
                                      attention_matrix, cfg.plots)
        plots.write_groups(tmp, languages, groups, cfg.plots)
        if similarity is not None:
            plots.write_similarity(tmp, languages, similarity, groups, cfg.plots)
    log(summary(plan, model, families))
    return plan


def family_line(families: dict) -> Optional[str]:
    """The groups' agreement with the language-family table, in words (None if it knows too few)."""
    if "family" not in families:
        return None
    parts = []
    for level in ("family", "genus"):
        best = families[level]["best_reachable"]
        parts.append(f"{level} ARI {families[level]['ari']:.2f}" +
                     (f" (at most {best:.2f} with these group sizes)" if best is not None else ""))
    unknown = f"; not in the table: {' '.join(families['unknown'])}" if families["unknown"] else ""
    return "groups against language families: " + ", ".join(parts) + unknown


def summary(plan: Plan, model: Optional[dict], families: Optional[dict] = None) -> str:
    """Groups, their agreement with the language families, MoE layers and (with the probed
    model's config) parameters after expansion."""
    lines = [f"{plan.num_groups} groups:"]
    lines += [f"  group {g}: {' '.join(members)}" for g, members in enumerate(plan.groups())]
    line = family_line(families or {})
    if line:
        lines.append(line)
    lines.append(f"MoE layers: {plan.moe_layers}")
    if model:
        config = ModelConfig.model_validate(model)
        topk = MoEConfig().topk
        total, grouped = moe_parameter_counts(config, plan, topk=1)
        learned = moe_parameter_counts(config, plan, topk=topk)[1]
        # both stages' figure: the experiments report stage 2's, with learned top-k routing
        lines.append(f"parameters: dense {count_parameters(config) / 1e6:.2f}M -> {total / 1e6:.2f}M after "
                     f"expansion; active per token {grouped / 1e6:.2f}M under group routing (stage 1), "
                     f"{learned / 1e6:.2f}M under learned top-{topk} (stage 2)")
    return "\n".join(lines)
