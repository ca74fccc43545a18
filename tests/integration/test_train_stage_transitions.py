"""GtS's stage boundaries keep the function: expanding the dense model and switching stage 1's
group routing to stage 2's learned routing do not raise the loss; the router's own loss does not
throttle the language model's updates through gradient clipping."""
from tests.conftest import TINY, indexed_args, read_metrics, run_gts


def valid_losses(run_dir, step):
    """Per-language validation losses a run logged at ``step``."""
    logged = [m for m in read_metrics(run_dir) if m["step"] == step and "valid_loss" in m]
    assert logged, f"{run_dir} logged no validation at step {step}"
    return {k: v for k, v in logged[-1].items() if k.startswith("valid_loss/")}


def assert_not_raised(before: dict, after: dict, where: str):
    assert len(before) == 4 and before.keys() == after.keys()
    for key in before:
        assert after[key] <= before[key] + 1e-5, (where, key, before[key], after[key])


def test_neither_stage_transition_raises_the_loss(gts_setup, tmp_path):
    evals = ["--set", "train.eval_samples=8"]
    run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path / "dense"), *indexed_args(gts_setup["data"]),
            "--set", f"train.init_from={gts_setup['base']}", "--set", "train.steps=0", *evals)
    run_gts("train", "--stage", "group", "--run-dir", str(tmp_path / "group"), *gts_setup["args"], *evals,
            "--set", f"train.init_from={gts_setup['moe']}", "--set", "train.steps=12", "--set", "train.lr=3e-3",
            "--set", "train.eval_interval=12")
    run_gts("train", "--stage", "learned", "--run-dir", str(tmp_path / "learned"), *gts_setup["args"], *evals,
            "--set", f"train.init_from={tmp_path / 'group' / 'checkpoints'}", "--set", "train.steps=4",
            "--set", "train.eval_interval=4", "--set", "train.lr=1e-4")
    assert_not_raised(valid_losses(tmp_path / "dense", 0), valid_losses(tmp_path / "group", 0), "expand -> stage 1")
    end_of_group = valid_losses(tmp_path / "group", 12)
    assert end_of_group != valid_losses(tmp_path / "group", 0)  # stage 1 trained
    assert_not_raised(end_of_group, valid_losses(tmp_path / "learned", 0), "stage 1 -> stage 2")


def test_the_router_loss_does_not_shrink_the_language_model_updates(gts_setup, tmp_path):
    """Clipping at 0.05 is engaged at every step; the router's loss gradient is left out of the
    clipping norm, so with that loss kept away from the layers below the router, the language
    model trains exactly as without it."""
    common = [*gts_setup["args"], "--set", f"train.init_from={gts_setup['moe']}", "--set", "train.steps=6",
              "--set", "train.clip_grad=0.05", "--set", "train.log_interval=1",
              "--set", "moe.router_loss_into_model=false"]
    for weight in ("0", "1.28"):
        run_gts("train", "--stage", "group", "--run-dir", str(tmp_path / weight), *common,
                "--set", f"moe.router_loss_weight={weight}")
    without, with_loss = read_metrics(tmp_path / "0"), read_metrics(tmp_path / "1.28")
    trained = [m for m in with_loss if "loss" in m]
    assert len(trained) == 6 and all(m["grad_norm"] > 0.05 for m in trained)
    assert trained[-1]["router_loss"] < trained[0]["router_loss"]  # the router does learn
    for a, b in zip([m for m in without if "loss" in m], trained):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"]), (a, b)
