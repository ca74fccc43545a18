"""The GtS model: expansion preserves the dense function, group routing sends each token to its
group's expert, both training stages agree across parallel layouts, the router learns."""
import json

import pytest
import torch

from tests.conftest import TINY, assert_one_line_error, indexed_args, read_metrics, run_gts, train_losses


@pytest.fixture(scope="module")
def megatron_single():
    """megatron's parallel state on a real 1-rank gloo group, for in-process model checks."""
    from gts_megatron.config import ParallelConfig
    from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

    yield init_runtime(ParallelConfig(), 1234)
    shutdown_runtime()


def load_models(setup, stage="group", router_loss_weight=1.28):
    """The dense base and the expanded model, loaded from the setup's checkpoints."""
    from gts_megatron.config import load_config
    from gts_megatron.engine.checkpoint import Checkpointable, load_checkpoint
    from gts_megatron.contracts.checkpoint import resolve_checkpoint
    from gts_megatron.model.llama import build_model, transformer_config
    from gts_megatron.contracts.preflight import check_moe
    from gts_megatron.train import build_gts_model

    cfg = load_config(TINY, [*(a for a in setup["args"][3::2]), f"moe.stage={stage}",
                             f"moe.router_loss_weight={router_loss_weight}"])
    plan = check_moe(cfg)
    dense = build_model(cfg.model, transformer_config(cfg.model, cfg.parallel))
    load_checkpoint(setup["base"], Checkpointable(dense, cfg.model))
    moe, _ = build_gts_model(cfg, plan)
    load_checkpoint(resolve_checkpoint(setup["moe"]), Checkpointable(moe, cfg.model), plan)
    return cfg, plan, dense, moe


def token_batch(plan, groups, seq=32, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (len(groups), seq), generator=g)
    return tokens, torch.arange(seq).expand_as(tokens), torch.tensor(groups)


def test_expanded_model_computes_the_dense_function(gts_setup, megatron_single):
    from gts_megatron.model.gts import ROUTING

    _, plan, dense, moe = load_models(gts_setup)
    tokens, positions, groups = token_batch(plan, [0, 1, 1, 0])  # micro-batch mixing groups
    dense.eval(), moe.eval()
    with torch.no_grad():
        expected = dense(input_ids=tokens, position_ids=positions, attention_mask=None)
        ROUTING.begin(groups)
        got = moe(input_ids=tokens, position_ids=positions, attention_mask=None)
    assert (got - expected).abs().max().item() <= 1e-5
    assert type(moe.decoder.layers[1].mlp).__name__ == "MoELayer"
    # group routing uses the csrc dispatcher by default
    assert type(moe.decoder.layers[1].mlp.token_dispatcher).__name__ == "GroupTokenDispatcher"
    assert type(moe.decoder.layers[0].mlp).__name__ == "MLP"


def test_a_tokens_loss_reaches_only_its_groups_expert(gts_setup, megatron_single):
    from gts_megatron.model.gts import ROUTING

    _, plan, _, moe = load_models(gts_setup)
    experts = moe.decoder.layers[1].mlp.experts.local_experts
    for group in range(plan.num_groups):
        moe.zero_grad()
        tokens, positions, groups = token_batch(plan, [group, group], seed=group)
        ROUTING.begin(groups)
        moe(input_ids=tokens, position_ids=positions, attention_mask=None, labels=tokens).mean().backward()
        own = plan.group_to_expert[group]
        for index, expert in enumerate(experts):
            norms = [p.grad.abs().sum().item() if p.grad is not None else 0.0 for p in expert.parameters()]
            assert all(n > 0 for n in norms) if index == own else all(n == 0 for n in norms), (group, index, norms)
        assert moe.decoder.layers[1].mlp.router.weight.grad.abs().sum() > 0  # the router loss trains it


def test_group_ids_are_required_and_parameter_counts_are_exact(gts_setup, megatron_single):
    from gts_megatron.errors import GtsError
    from gts_megatron.model.gts import ROUTING
    from gts_megatron.model.sizes import moe_parameter_counts

    cfg, plan, dense, moe = load_models(gts_setup)
    tokens, positions, _ = token_batch(plan, [0, 1])
    ROUTING.begin(None)
    with pytest.raises(GtsError, match="got no group ids"):
        moe(input_ids=tokens, position_ids=positions, attention_mask=None)
    total, active = moe_parameter_counts(cfg.model, plan, topk=1)
    assert total == sum(p.numel() for p in moe.parameters())
    expert = sum(p.numel() for p in moe.decoder.layers[1].mlp.experts.local_experts[0].parameters())
    router = moe.decoder.layers[1].mlp.router.weight.numel()
    assert total == sum(p.numel() for p in dense.parameters()) + (plan.num_experts - 1) * expert + router
    assert active == total - (plan.num_experts - 1) * expert


# with no dispatcher set, stage group uses the csrc group dispatcher and stage learned megatron's
# alltoall; "ep2-alltoall" runs stage group on megatron's alltoall for the comparison
LAYOUTS = {"ep2": ["--set", "parallel.expert=2"],
           "ep2-alltoall": ["--set", "parallel.expert=2", "--set", "moe.dispatcher=alltoall"],
           "ep2-allgather": ["--set", "parallel.expert=2", "--set", "moe.dispatcher=allgather"],
           "tp2-sp": ["--set", "parallel.tensor=2", "--set", "parallel.sequence_parallel=true"]}


@pytest.fixture(scope="module")
def stage_run(gts_setup, tmp_path_factory):
    """``stage_run(stage, layout)``: the metrics of 5 steps of a stage (group from the expansion,
    learned from the one-process group run) at a layout ("one": one process), validated at steps 0
    and 5; each run once per module, shared by the layout and function-preservation checks."""
    root = tmp_path_factory.mktemp("stages")

    def run(stage: str, layout: str = "one") -> list[dict]:
        out = root / stage / layout
        if not (out / "checkpoints").exists():
            start = gts_setup["moe"] if stage == "group" else root / "group" / "one" / "checkpoints"
            if stage == "learned":
                run("group")
            nproc = [] if layout == "one" else ["--nproc-per-node", "2"]
            run_gts("train", "--stage", stage, "--run-dir", str(out), *nproc, *gts_setup["args"],
                    "--set", f"train.init_from={start}", "--set", "train.steps=5", "--set", "train.eval_interval=5",
                    *LAYOUTS.get(layout, []))
        return read_metrics(out)

    return run


@pytest.mark.parametrize("stage,layout", [(stage, layout) for stage in ("group", "learned") for layout in LAYOUTS
                                          if (stage, layout) != ("learned", "ep2-alltoall")])  # = ep2 there
def test_both_stages_match_one_process_at_ep2_and_tp2(stage_run, stage, layout):
    expected, got = stage_run(stage), stage_run(stage, layout)
    assert len(got) == len(expected)
    for want, have in zip(expected, got):
        for key in want:
            if key not in ("step_time_s", "tokens_per_s"):
                assert abs(have[key] - want[key]) <= 1e-5, (key, want, have)
    if stage == "group":
        steps = [m for m in got if "loss" in m]
        assert len(steps) == 5 and all("router_loss" in m and "router_accuracy" in m for m in steps)


def test_function_preserved_at_every_layout(gts_setup, stage_run, tmp_path):
    """At step 0 of stage 1, at every layout, the per-language validation loss equals the dense
    model's: the expansion changes no function."""
    run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path / "dense"), *indexed_args(gts_setup["data"]),
            "--set", f"train.init_from={gts_setup['base']}", "--set", "train.steps=0")
    dense = read_metrics(tmp_path / "dense")[-1]
    languages = [k for k in dense if k.startswith("valid_loss/")]
    assert len(languages) == 4
    for layout in ("one", *LAYOUTS):
        (moe,) = [m for m in stage_run("group", layout) if m["step"] == 0 and "valid_loss" in m]
        for key in languages:
            assert abs(moe[key] - dense[key]) <= 1e-5, (layout, key, moe[key], dense[key])


def test_router_loss_teaches_the_router_the_groups(gts_setup, tmp_path):
    run_gts("train", "--stage", "group", "--run-dir", str(tmp_path), *gts_setup["args"],
            "--set", f"train.init_from={gts_setup['moe']}", "--set", "train.steps=40", "--set", "train.lr=3e-3",
            "--set", "train.warmup_steps=5", "--set", "train.eval_samples=16", "--set", "train.eval_interval=40")
    before, after = [m for m in read_metrics(tmp_path) if "valid_router_accuracy" in m]
    assert before["step"] == 0 and before["valid_router_accuracy"] < 0.8  # untrained: near chance
    assert after["step"] == 40 and after["valid_router_accuracy"] > 0.9  # on held-out text
    assert after["valid_router_loss"] < before["valid_router_loss"] / 2
    for lang in json.loads(gts_setup["plan"].read_text())["languages"]:
        assert after[f"valid_router_accuracy/{lang}"] > 0.9


@pytest.mark.parametrize("case, fragments", [
    ("layers_outside", ["moe_layers [5] are outside the model's 2 layers"]),
    ("uneven_experts", ["3 experts cannot be spread evenly over parallel.expert=2"]),
    ("dense_checkpoint", ["is a dense model", "gts expand"]),
    ("other_plan", ["does not match the plan"]),
    ("no_languages", ["moe.stage group routes tokens by their language's group", "data.kind indexed"]),
    ("tp_without_sp", ["needs parallel.sequence_parallel"]),
])
def test_bad_moe_input_is_refused_before_training(gts_setup, tmp_path, case, fragments):
    plan = json.loads(gts_setup["plan"].read_text())
    start, extra = gts_setup["moe"], []
    if case == "layers_outside":
        plan["moe_layers"] = [1, 5]
    elif case == "uneven_experts":
        plan.update(num_experts=3, group_to_expert=[0, 2])
        extra = ["--nproc-per-node", "2", "--set", "parallel.expert=2"]
    elif case == "dense_checkpoint":
        start = gts_setup["base"]
    elif case == "other_plan":
        plan["moe_layers"] = [0]
    elif case == "no_languages":
        extra = ["--set", "data.kind=synthetic"]
    elif case == "tp_without_sp":
        extra = ["--nproc-per-node", "2", "--set", "parallel.tensor=2"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc = run_gts("train", "--stage", "group", "--run-dir", str(tmp_path / "run"), *gts_setup["args"],
                   "--set", f"moe.plan={tmp_path / 'plan.json'}", "--set", f"train.init_from={start}", *extra,
                   check=False)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "run").exists()


def test_expand_refuses_a_plan_outside_the_model_and_skips_a_repeat(gts_setup, tmp_path):
    plan = json.loads(gts_setup["plan"].read_text())
    plan["moe_layers"] = [2]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc = run_gts("expand", "--dense", str(gts_setup["base"]), "--plan", str(tmp_path / "plan.json"),
                   "--out", str(tmp_path / "moe"), check=False)
    assert_one_line_error(proc, "moe_layers [2] are outside the model's 2 layers")
    assert not (tmp_path / "moe").exists()
    again = run_gts("expand", "--dense", str(gts_setup["base"].parent), "--plan", str(gts_setup["plan"]),
                    "--out", str(gts_setup["moe"]))
    assert "already holds this expansion" in again.stdout


def checkpoint_tensor(path, key):
    """One tensor of a megatron dist-checkpoint, whole, read with torch's own DCP reader."""
    import torch.distributed.checkpoint as dcp

    shape = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata[key]
    out = {key: torch.empty(shape.size, dtype=shape.properties.dtype)}
    dcp.load(out, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
    return out[key]


def test_expand_with_optimizer_state_gives_each_expert_its_mlps_adam_moments(gts_setup, tmp_path):
    """Every expert continues its layer's dense MLP's moments (the router starts at zero ones), and
    stage 1 starts from them with train.init_optimizer; without them that is refused by name."""
    run_gts("expand", "--dense", str(gts_setup["base"]), "--plan", str(gts_setup["plan"]), "--out",
            str(tmp_path / "moe"), "--optimizer-state")
    moe, dense = tmp_path / "moe" / "iter_0000000", gts_setup["base"]
    layer = json.loads(gts_setup["plan"].read_text())["moe_layers"][0]
    other = 1 - layer  # a dense layer of the MoE model keeps its own moments
    for moment in ("exp_avg", "exp_avg_sq"):
        key = f"optimizer.state.{moment}.decoder.layers"  # the dense model's layers are stacked in one tensor
        experts = checkpoint_tensor(moe, f"{key}.{layer}.mlp.experts.experts.linear_fc1.weight")
        mlp = checkpoint_tensor(dense, f"{key}.mlp.linear_fc1.weight")[layer]
        assert mlp.abs().sum() > 0 and all(torch.equal(expert, mlp) for expert in experts)
        assert torch.equal(checkpoint_tensor(moe, f"{key}.{other}.mlp.linear_fc2.weight"),
                           checkpoint_tensor(dense, f"{key}.mlp.linear_fc2.weight")[other])
        assert not checkpoint_tensor(moe, f"{key}.{layer}.mlp.router.weight").any()
    train = ["--stage", "group", *gts_setup["args"], "--set", "train.steps=2", "--set", "train.init_optimizer=true"]
    run_gts("train", "--run-dir", str(tmp_path / "continued"), *train, "--set", f"train.init_from={tmp_path / 'moe'}")
    assert sorted(train_losses(tmp_path / "continued")) == [1, 2]
    proc = run_gts("train", "--run-dir", str(tmp_path / "refused"), *train, "--set",
                   f"train.init_from={gts_setup['moe']}", check=False)
    assert_one_line_error(proc, "train.init_optimizer", "holds weights only, no optimizer state", "--optimizer-state")


@pytest.mark.slow
def test_placement_trains_each_ep_rank_on_its_groups_and_matches_alltoall(gts_setup, tmp_path):
    """moe.placement at EP=2: each EP rank reads only its group's languages, so the group
    dispatcher (which refuses any token routed to the other rank) skips the all-to-all; megatron's
    alltoall on the same samples gives the same losses, and a resumed run continues the streams."""
    import shutil

    from gts_megatron.contracts.checkpoint import LATEST_FILE

    outputs = {}

    def placed(name, dispatcher):
        outputs[name] = run_gts(
            "train", "--stage", "group", "--run-dir", str(tmp_path / name), "--nproc-per-node", "2",
            *gts_setup["args"], "--set", f"train.init_from={gts_setup['moe']}", "--set", "train.steps=5",
            "--set", "train.save_interval=3", "--set", "parallel.expert=2", "--set", "moe.placement=true",
            "--set", f"moe.dispatcher={dispatcher}")
        return read_metrics(tmp_path / name)

    group, alltoall = placed("group", "group"), placed("alltoall", "alltoall")
    # resume from the step-3 checkpoint of the same command
    shutil.copytree(tmp_path / "group", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "iter_0000005")
    (tmp_path / "resumed" / "checkpoints" / LATEST_FILE).write_text("iter_0000003")
    resumed = [m for m in placed("resumed", "group") if "loss" in m][-2:]
    assert "resumed from" in outputs["resumed"].stdout + outputs["resumed"].stderr
    steps = [m for m in group if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5] and [m["step"] for m in resumed] == [4, 5]
    assert len(group) == len(alltoall) and "valid_loss" in group[-1]  # validation takes the general path
    for runs in ((group, alltoall), (steps[3:], resumed)):
        for want, have in zip(*runs):
            assert want.keys() == have.keys()
            for key in want:
                if key not in ("step_time_s", "tokens_per_s"):
                    assert abs(have[key] - want[key]) <= 1e-5, (key, want, have)
