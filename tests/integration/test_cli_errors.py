"""Bad input through the real `gts` command: one line naming the problem, exit 2, nothing written."""

import pytest

from tests.conftest import TINY, assert_one_line_error, files_under, run_gts


def assert_refused_before_writing(tmp_path, args, *fragments):
    """`gts pretrain <args>` into a fresh run dir: one-line error, and the run dir never created."""
    run = tmp_path / "run"
    proc = run_gts("pretrain", "--run-dir", str(run), *args, check=False)
    assert_one_line_error(proc, *fragments)
    assert not run.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained")
    run_gts("pretrain", "--config", TINY, "--run-dir", str(run), "--set", "train.steps=2")
    return run


@pytest.mark.parametrize("text, fragments", [
    ("model: tiny\ntrain:\n  stepz: 3\n", ["unknown field train.stepz", "valid fields: steps"]),
    ("model: tiny\ntrain:\n  steps: three\n", ["train.steps: Input should be a valid integer", "'three'"]),
    ("model:\n  hidden_size: 60\n  num_attention_heads: 8\n", ["hidden_size 60 is not divisible by num_attention_heads 8"]),
])
def test_bad_config_file(tmp_path, text, fragments):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert_refused_before_writing(tmp_path, ["--config", str(config)], str(config), *fragments)


def test_missing_config_file(tmp_path):
    assert_one_line_error(run_gts("pretrain", "--config", str(tmp_path / "nope.yaml"), check=False),
                          "nope.yaml does not exist")


def test_layout_not_matching_world_size(tmp_path):
    assert_refused_before_writing(
        tmp_path, ["--config", TINY, "--nproc-per-node", "2", "--set", "parallel.tensor=2", "--set", "parallel.data=2"],
        "tensor(2) x pipeline(1) x data(2) = 4 does not match the world size 2")


def test_missing_checkpoint(tmp_path):
    assert_refused_before_writing(tmp_path, ["--config", TINY, "--set", f"train.init_from={tmp_path / 'nowhere'}"],
                                  f"checkpoint {tmp_path / 'nowhere'} does not exist")


def test_checkpoint_of_another_model(tmp_path, trained):
    proc = run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path / "run"), "--set", "model.num_layers=3",
                   "--set", f"train.init_from={trained / 'checkpoints' / 'iter_0000002'}", check=False)
    assert_one_line_error(proc, "has model.num_layers=2 but the config says 3")


def test_corrupt_checkpoint_on_resume_changes_nothing(tmp_path, trained):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for shard in (run / "checkpoints" / "iter_0000002").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:100])  # truncated, as by a full disk
    before = files_under(run)
    proc = run_gts("pretrain", "--config", TINY, "--run-dir", str(run), "--set", "train.steps=4", check=False)
    assert_one_line_error(proc, "iter_0000002: __0_0.distcp does not match the checksum recorded when it was saved")
    after = files_under(run)
    assert {p for p in after if p.name != "config.yaml"} == {p for p in before if p.name != "config.yaml"}
    assert all(after[p] == before[p] for p in before if "checkpoints" in p.parts or p.name == "metrics.jsonl")


def test_latest_pointing_at_a_missing_checkpoint(tmp_path, trained):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoints" / "latest").write_text("iter_0000099\n")
    proc = run_gts("pretrain", "--config", TINY, "--run-dir", str(run), check=False)
    assert_one_line_error(proc, "names iter_0000099, which is missing or incomplete")


def test_bad_override_syntax(tmp_path):
    assert_one_line_error(run_gts("pretrain", "--config", TINY, "--set", "steps", check=False),
                          "expected section.field=value")


def test_batch_not_divisible_over_data_parallel_ranks(tmp_path):
    assert_refused_before_writing(
        tmp_path, ["--config", TINY, "--nproc-per-node", "2", "--set", "train.micro_batch_size=4",
                   "--set", "train.global_batch_size=4"],
        "global_batch_size 4 must be a multiple of micro_batch_size 4 x data-parallel size 2")


def test_config_check_refuses_what_pretrain_refuses_with_the_same_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny\nparallel:\n  data: 2\ntrain:\n  global_batch_size: 6\n  micro_batch_size: 2\n"
                      "data:\n  kind: synthetic\n")
    checked = run_gts("config", "check", str(config), check=False)
    started = run_gts("pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--nproc-per-node", "2",
                      check=False)
    line = "train.global_batch_size 6 must be a multiple of micro_batch_size 2 x data-parallel size 2"
    assert_one_line_error(checked, line)
    assert_one_line_error(started, line)
    assert checked.stderr == started.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, kept", [("syn00/train.bin", 0.5), ("syn01/valid.idx", 0.5), ("syn01/test.idx", 0.0)])
def test_a_truncated_dataset_file_is_one_line_before_any_run_directory_is_made(families_data, tmp_path, name, kept):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(families_data, data)
    content = (data / name).read_bytes()
    (data / name).write_bytes(content[:int(len(content) * kept)])
    proc = run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path / "run"), "--set", "data.kind=indexed",
                   "--set", f"data.path={data}", check=False)
    assert_one_line_error(proc, str(data / name), "rebuild the data directory")
    assert not (tmp_path / "run").exists()
