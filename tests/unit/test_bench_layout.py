"""`gts bench layout`: the layouts it lists are ones megatron can build, its memory agrees with the
model's own parameter count, and a GtS model from a 70B base needs pipeline parallelism on 8 x 8
80 GB GPUs."""
from __future__ import annotations

from gts_megatron.bench.layout import bench_layout, layouts
from gts_megatron.config import BenchLayoutConfig, build_config
from gts_megatron.model.sizes import count_parameters


def test_one_gpu_holds_the_dense_weights_gradients_and_adam_state_of_every_parameter():
    cfg = BenchLayoutConfig(preset="small", experts=1, moe_layers=0, nodes=1, gpus_per_node=1,
                            global_batch_size=8, micro_batch_size=1)
    _, found = layouts(cfg)
    assert len(found) == 1
    params = count_parameters(build_config({"model": "small"}, "test").model)
    # bf16 weights, fp32 gradients, fp32 master weights and two Adam moments: 18 bytes each
    assert abs(found[0].weights_gb * 1e9 - 18 * params) <= 1e-6 * 18 * params
    assert found[0].bubble == 0 and found[0].alltoall_gb == 0 and found[0].micro_batches == 8


def test_every_listed_layout_is_one_megatron_builds_and_its_bubble_is_1f1b():
    cfg = BenchLayoutConfig(nodes=2, gpus_per_node=8, top=1000)
    model, found = layouts(cfg)
    assert found
    for x in found:
        assert x.pp * x.tp * x.dp == 16 and model.num_layers % x.pp == 0 and x.tp <= 8
        assert (x.tp * x.dp) % (x.ep * x.etp) == 0 and cfg.experts % x.ep == 0
        assert x.micro_batches * x.dp * cfg.micro_batch_size == cfg.global_batch_size
        assert abs(x.bubble - (x.pp - 1) / (x.micro_batches + x.pp - 1)) < 1e-12
        assert (x.alltoall_gb == 0) == (x.ep == 1)
    by_pp = {x.pp: x.weights_gb for x in found if (x.tp, x.ep, x.etp) == (8, 1, 8)}
    assert sorted(by_pp) == [1, 2] and by_pp[2] < by_pp[1]  # deeper pipelines hold less per GPU


def test_a_gts_model_from_a_70b_base_needs_pipeline_parallelism_on_64_h100s():
    result = bench_layout(BenchLayoutConfig())  # the defaults: llama-70b, 8 experts in 16 layers, 8 x 8 x 80 GB
    assert 140e9 < result["gts_parameters"] < 160e9 and 69e9 < result["dense_parameters"] < 72e9
    best = result["layouts"][0]
    assert best["fits"] and best["pp"] > 1 and best["memory_gb"] <= 0.85 * 80
    assert not any(x["fits"] for x in result["layouts"] if x["pp"] == 1)
