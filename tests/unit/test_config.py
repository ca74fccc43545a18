"""Config validation: typed fields, one-line errors that name the field, presets, overrides."""
import pytest

from gts_megatron.config import RunConfig, describe_fields, dump_config, load_config, model_presets
from gts_megatron.errors import GtsError
from tests.conftest import TINY


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_tiny_config_loads_with_preset():
    cfg = load_config(TINY)
    assert cfg.model.num_layers == 2 and cfg.model.num_query_groups == 2
    assert cfg.train.lr == 1e-3


def test_exponent_floats_without_dot_are_floats(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  min_lr: 5e-5\n"))
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.min_lr == pytest.approx(5e-5)


_ALIAS_BOMB = "".join(f"{name}: &{name} [{', '.join([f'*{prev}' if prev else 'x'] * 9)}]\n"
                      for prev, name in zip(["", "a", "b", "c", "d", "e", "f"], "abcdefg")) + "train: *g\n"


@pytest.mark.parametrize("text, expected", [
    ("model:\n  hiden_size: 64\n", "unknown field model.hiden_size; valid fields: num_layers"),
    ("model:\n  hidden_size: big\n", "model.hidden_size: Input should be a valid integer (got 'big')"),
    ("train:\n  steps: 2.5\n", "train.steps: Input should be a valid integer (got 2.5)"),
    ("model:\n  tie_embeddings: 1\n", "model.tie_embeddings: Input should be a valid boolean"),
    ("model:\n  hidden_size: 65\n  num_attention_heads: 4\n",
     "hidden_size 65 is not divisible by num_attention_heads 4"),
    ("model:\n  num_attention_heads: 4\n  num_query_groups: 3\n", "not divisible by num_query_groups 3"),
    ("data:\n  kind: webtext\n", "data.kind: Input should be 'synthetic'"),
    ("model: giant\n", "unknown preset 'giant'; valid presets: llama-1b, llama-70b, small, tiny"),
    ("train: [1, 2\n", "not valid YAML"),
    ("bogus:\n  x: 1\n", "unknown field bogus; valid fields: model, parallel, train, data"),
    ("train:\n  global_batch_size: 6\n  micro_batch_size: 4\n", "not a multiple of micro_batch_size 4"),
    ("train:\n  steps: 3\n  lr: 1.0e-3\n  steps: 4\n", "line 4: not valid YAML (key 'steps' is given twice"),
    ("model:\n  hidden_size: 64\nmodel:\n  hidden_size: 32\n", "key 'model' is given twice"),
    (_ALIAS_BOMB, "aliases (*name) expand to more than 100000 values"),
])
def test_bad_config_names_the_problem(tmp_path, text, expected):
    with pytest.raises(GtsError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert expected in message and "\n" not in message and len(message) < 400
    assert str(tmp_path / "run.yaml") in message


def test_a_config_that_is_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("train:\n  steps: 3\n# café\n".encode("latin-1"))
    with pytest.raises(GtsError, match=r"run.yaml: not UTF-8 text \(byte 23: b'\\xe9'\)"):
        load_config(path)


def test_overrides_apply_and_are_validated():
    cfg = load_config(TINY, ["train.steps=7", "parallel.tensor=2"])
    assert cfg.train.steps == 7 and cfg.parallel.tensor == 2
    with pytest.raises(GtsError, match="train.stepz"):
        load_config(TINY, ["train.stepz=7"])
    with pytest.raises(GtsError, match="expected section.field=value"):
        load_config(TINY, ["steps"])


def test_layout_must_match_world_size():
    cfg = load_config(TINY, ["parallel.tensor=2", "parallel.data=2"])
    with pytest.raises(GtsError, match=r"tensor\(2\) x pipeline\(1\) x data\(2\) = 4 does not match the world size 2"):
        cfg.parallel.data_parallel_size(2)
    assert cfg.parallel.data_parallel_size(4) == 2
    with pytest.raises(GtsError, match="does not divide the world size 3"):
        load_config(TINY, ["parallel.tensor=2"]).parallel.data_parallel_size(3)


def test_pipeline_layouts_the_world_or_the_layers_cannot_hold_are_refused():
    cfg = load_config(TINY, ["parallel.pipeline=2", "parallel.tensor=2", "parallel.sequence_parallel=true"])
    assert cfg.parallel.data_parallel_size(8) == 2 and cfg.parallel.stage_layers(2) == [1, 1]
    with pytest.raises(GtsError, match=r"tensor\(2\) x parallel.pipeline\(2\) = 4 does not divide the world size 6"):
        cfg.parallel.data_parallel_size(6)
    with pytest.raises(GtsError, match="parallel.pipeline 3 does not divide model.num_layers 2; give "
                                       "parallel.pipeline_layers"):
        load_config(TINY, ["parallel.pipeline=3"])
    with pytest.raises(GtsError, match=r"pipeline_layers \[1, 2\] sum to 3, not model.num_layers 2"):
        load_config(TINY, ["parallel.pipeline=2", "parallel.pipeline_layers=[1, 2]"])
    with pytest.raises(GtsError, match=r"pipeline_layers \[2\] must give each of the 2 pipeline stages"):
        load_config(TINY, ["parallel.pipeline=2", "parallel.pipeline_layers=[2]"])
    uneven = load_config(TINY, ["model.num_layers=5", "parallel.pipeline=2", "parallel.pipeline_layers=[3, 2]"])
    assert uneven.parallel.stage_layers(5) == [3, 2]
    # experts split within a pipeline stage: 4 processes, 2 stages of 2, so EP 4 cannot hold
    with pytest.raises(GtsError, match="does not divide the 2 processes of a pipeline stage"):
        load_config(TINY, ["parallel.pipeline=2", "parallel.expert=4"]).parallel.data_parallel_size(4)


def test_tensor_parallel_must_divide_heads():
    with pytest.raises(GtsError, match="parallel.tensor 4 must divide num_attention_heads 4 and num_query_groups 2"):
        load_config(TINY, ["parallel.tensor=4"])


def test_dump_round_trips(tmp_path):
    cfg = load_config(TINY, ["train.steps=3"])
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_every_field_is_documented():
    text = describe_fields()
    for section in RunConfig.model_fields.values():
        for name, field in section.annotation.model_fields.items():
            assert field.description, f"{name} has no description"
            assert f"  {name}:" in text
    assert set(model_presets()) >= {"tiny", "small", "llama-1b"}


def test_preset_with_changes(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  preset: small\n  vocab_size: 512\n"))
    assert cfg.model.vocab_size == 512 and cfg.model.hidden_size == 256


def test_dispatcher_resolves_by_stage_and_refuses_misfits():
    from gts_megatron.config import MoEConfig, ParallelConfig

    assert MoEConfig(stage="group").dispatcher_type == "group"
    assert MoEConfig(stage="learned").dispatcher_type == "alltoall"
    assert MoEConfig(stage="group", dispatcher="alltoall").dispatcher_type == "alltoall"
    with pytest.raises(ValueError, match="dispatcher group needs stage group"):
        MoEConfig(stage="learned", dispatcher="group")
    assert MoEConfig(stage="group", dispatcher="alltoall", placement=True).placement  # the sampler alone
    with pytest.raises(ValueError, match="placement needs stage group"):
        MoEConfig(stage="learned", placement=True)
    with pytest.raises(ValueError, match="placement needs parallel.expert_tensor equal to parallel.tensor 2"):
        RunConfig(parallel=ParallelConfig(tensor=2, expert=2, expert_tensor=1, sequence_parallel=True),
                  moe=MoEConfig(placement=True))
