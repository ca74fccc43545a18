"""Fuzzing the loaders that read what users write (run configs, JSON artifacts, plans): whatever
the bytes, they return a validated value or raise a one-line GtsError, never anything else.
Derandomised and bounded, so the suite is reproducible and takes seconds."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gts_megatron.artifacts import read_json
from gts_megatron.config import load_config
from gts_megatron.config.loading import parse_yaml
from gts_megatron.contracts.plan import Plan, load_plan
from gts_megatron.errors import GtsError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _one_line(exc: GtsError) -> None:
    message = str(exc)
    assert "\n" not in message and len(message) < 600, message


@FUZZ
@given(st.text(max_size=300))
def test_any_yaml_text_parses_or_is_one_line(text):
    try:
        parse_yaml(text, "fuzz.yaml")
    except GtsError as exc:
        _one_line(exc)


_YAMLISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                                  st.text(max_size=12)),
                        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                st.dictionaries(st.sampled_from(
                                                    ["model", "train", "parallel", "data", "moe", "steps", "lr",
                                                     "hidden_size", "tensor", "kind", "x"]), inner, max_size=4)),
                        max_leaves=12)


@FUZZ
@given(_YAMLISH)
def test_any_config_document_builds_a_valid_config_or_is_one_line(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("fuzz") / "run.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    try:
        cfg = load_config(path)
    except GtsError as exc:
        _one_line(exc)
    else:
        assert cfg.train.global_batch_size % cfg.train.micro_batch_size == 0


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_read_as_json_give_a_value_or_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "x.json"
    path.write_bytes(data)
    try:
        read_json(path)
    except GtsError as exc:
        _one_line(exc)


_LANGS = st.sampled_from(["de", "en", "fr", "ru", "ar"])
_PLANISH = st.fixed_dictionaries({
    "languages": st.lists(_LANGS, max_size=5),
    "language_to_group": st.dictionaries(_LANGS, st.integers(-1, 4), max_size=5),
    "group_to_expert": st.lists(st.integers(-1, 4), max_size=5),
    "num_experts": st.integers(-1, 5),
    "moe_layers": st.lists(st.integers(-1, 6), max_size=4),
}, optional={"inputs": st.dictionaries(st.sampled_from(["routing_sha256", "source"]), st.text(max_size=8)),
             "format": st.sampled_from(["gts-plan/1", "gts-plan/2"])})


@FUZZ
@given(_PLANISH)
def test_any_plan_json_is_a_consistent_plan_or_one_line(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("fuzz") / "plan.json"
    path.write_text(json.dumps(document))
    try:
        plan = load_plan(path)
    except GtsError as exc:
        _one_line(exc)
        return
    assert isinstance(plan, Plan)
    groups = plan.num_groups
    assert sorted(plan.language_to_group) == sorted(plan.languages)
    assert sorted(set(plan.language_to_group.values())) == list(range(groups))
    assert len(set(plan.group_to_expert)) == groups and all(0 <= e < plan.num_experts for e in plan.group_to_expert)
    assert len(set(plan.moe_layers)) == len(plan.moe_layers) and min(plan.moe_layers) >= 0
