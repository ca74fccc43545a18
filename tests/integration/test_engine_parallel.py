"""Real 2-process gloo runs: TP=2 with sequence parallel and DP=2 reproduce one process."""
import pytest

from tests.conftest import TINY, indexed_args, read_metrics, run_gts, train_losses, valid_loss

STEPS = ["--set", "train.steps=5"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = tmp_path_factory.mktemp("single")
    run_gts("pretrain", "--config", TINY, "--run-dir", str(run), *STEPS)
    return run


@pytest.mark.parametrize("layout", [
    ["--set", "parallel.tensor=2", "--set", "parallel.sequence_parallel=true"],
    ["--set", "parallel.tensor=2"],
    ["--set", "parallel.data=2"],
    ["--set", "parallel.distributed_optimizer=true"],
], ids=["tp2-sp", "tp2", "dp2", "dp2-distopt"])
def test_two_processes_match_one(single, tmp_path, layout):
    run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path), "--nproc-per-node", "2", *STEPS, *layout)
    expected, got = train_losses(single), train_losses(tmp_path)
    assert sorted(got) == [1, 2, 3, 4, 5]
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-5, (step, got[step], expected[step])
    assert abs(valid_loss(tmp_path) - valid_loss(single)) <= 1e-5
    assert expected[5] < expected[1]  # it learns


def test_language_mixture_is_the_same_at_dp2(families_data, tmp_path):
    args = ["--config", TINY, *STEPS, *indexed_args(families_data)]
    run_gts("pretrain", "--run-dir", str(tmp_path / "one"), *args)
    run_gts("pretrain", "--run-dir", str(tmp_path / "two"), "--nproc-per-node", "2", *args)
    expected, got = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-5
    final_one, final_two = read_metrics(tmp_path / "one")[-1], read_metrics(tmp_path / "two")[-1]
    per_language = [k for k in final_one if k.startswith("valid_loss/")]
    assert len(per_language) == 4
    for key in per_language:
        assert abs(final_one[key] - final_two[key]) <= 1e-5
