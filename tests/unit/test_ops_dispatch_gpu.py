"""The CUDA group-dispatch kernels: equal to the CPU ops and to megatron's permute, gradients, the
checked mode, and the group dispatcher in a model. Marked `gpu`: skipped without CUDA (failed
instead under GTS_REQUIRE_GPU=1, as scripts/gpu_check.sh runs them)."""
import os

import pytest
import torch

from gts_megatron import ops
from gts_megatron.runtime.distributed import free_port

pytestmark = pytest.mark.gpu

SHAPES = [(0, 4, 3), (1, 1, 1), (7, 3, 1), (33, 16, 8), (300, 64, 5), (1000, 8, 200), (65536, 1024, 8)]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _inputs(tokens: int, hidden: int, groups: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(tokens * 31 + hidden)
    wide = torch.randn(tokens, hidden + 5, generator=g).to(dtype)  # rows with a stride
    ids = torch.randint(0, max(1, groups - 1), (tokens,), generator=g)  # the last group left empty
    return wide[:, 2:2 + hidden], ids, torch.rand(tokens, generator=g)


def test_the_extension_has_cuda_kernels():
    assert ops.HAVE_EXTENSION, "gts_megatron._C is not built: GTS_BUILD_CUDA=1 python setup.py build_ext --inplace"
    x = torch.zeros(4, 2, device="cuda")
    permuted, counts, _ = torch.ops.gts.group_permute(x, torch.tensor([1, 0, 1, 0], device="cuda"), 2)
    assert permuted.is_cuda and counts.tolist() == [2, 2]


@pytest.mark.parametrize("tokens,hidden,groups", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ops_equal_the_cpu_ops(tokens, hidden, groups, dtype):
    x, ids, weights = _inputs(tokens, hidden, groups, dtype)
    want_p, want_c, want_r = ops.group_permute(x, ids, groups)
    for id_dtype in (torch.int64, torch.int32):
        permuted, counts, row_map = ops.group_permute(x.cuda(), ids.to(id_dtype).cuda(), groups)
        assert torch.equal(permuted.cpu(), want_p) and torch.equal(counts.cpu(), want_c)
        assert torch.equal(row_map.cpu(), want_r)
    assert torch.equal(ops.group_unpermute(permuted, row_map).cpu(), x)
    assert torch.equal(ops.group_unpermute(permuted, row_map, weights.cuda()).cpu(),
                       ops.group_unpermute(want_p, want_r, weights))


@pytest.mark.parametrize("tokens,hidden,groups", [s for s in SHAPES if s[0] > 0])
def test_cuda_permute_equals_megatrons_permute(tokens, hidden, groups):
    from megatron.core.transformer.moe.moe_utils import permute, unpermute

    x, ids, _ = _inputs(tokens, hidden, groups, torch.bfloat16)
    x, ids = x.contiguous().cuda(), ids.cuda()
    routing_map = torch.nn.functional.one_hot(ids, groups).bool()
    theirs, _, sorted_indices = permute(x, routing_map, num_out_tokens=tokens)
    ours, _, row_map = ops.group_permute(x, ids, groups)
    assert torch.equal(ours, theirs)  # both: by group, in token order within a group
    assert torch.equal(ops.group_unpermute(ours, row_map),
                       unpermute(theirs, sorted_indices, x.shape, routing_map=routing_map))


def test_cuda_gradients_equal_the_cpu_gradients():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(500, 32, dtype=torch.float64, generator=g)
    weights, ids = torch.rand(500, dtype=torch.float64, generator=g), torch.randint(0, 6, (500,), generator=g)
    grads = []
    for device in ("cpu", "cuda"):
        h, w = hidden.to(device).requires_grad_(), weights.to(device).requires_grad_()
        permuted, _, row_map = ops.group_permute(h, ids.to(device), 6)
        ops.group_unpermute(permuted * 3, row_map, w).square().sum().backward()
        grads.append((h.grad.cpu(), w.grad.cpu()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-12) and torch.allclose(grads[0][1], grads[1][1], atol=1e-12)
    h, w = hidden[:40].cuda().requires_grad_(), weights[:40].cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.group_unpermute(*ops.group_permute(a, ids[:40].cuda(), 6)[::2], b),
                                    (h, w))


def test_a_bad_group_id_on_the_gpu_is_refused_in_checked_mode():
    assert os.environ.get("GTS_DISPATCH_UNCHECKED") != "1"
    with pytest.raises(IndexError, match="group_ids"):
        ops.group_permute(torch.zeros(4, 2, device="cuda"), torch.tensor([0, 1, 5, 0], device="cuda"), 3)
    torch.cuda.synchronize()  # the device is still usable afterwards
    assert ops.group_permute(torch.ones(2, 2, device="cuda"), torch.tensor([1, 0], device="cuda"), 2)[1].tolist() == [1, 1]


def _dispatcher_worker(rank: int, port: int) -> None:
    """One GPU process: the group dispatcher (the csrc kernels) and megatron's alltoall dispatcher
    give the same output and gradients for the same weights."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from gts_megatron.config import MoEConfig, ParallelConfig, build_config
    from gts_megatron.model.dispatch import GroupTokenDispatcher
    from gts_megatron.model.gts import ROUTING, build_moe_model
    from gts_megatron.contracts.plan import Plan
    from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

    runtime = init_runtime(ParallelConfig(), 7)
    try:
        assert runtime.device.type == "cuda"
        model_cfg = build_config({"model": "tiny"}, "test").model
        plan = Plan(languages=["a", "b", "c"], num_experts=3, group_to_expert=[0, 1, 2],
                    language_to_group={"a": 0, "b": 1, "c": 2}, moe_layers=[0, 1])
        megatrons, _ = build_moe_model(model_cfg, ParallelConfig(), MoEConfig(stage="group", dispatcher="alltoall"), plan)
        ours, _ = build_moe_model(model_cfg, ParallelConfig(), MoEConfig(stage="group", dispatcher="group"), plan)
        ours.load_state_dict(megatrons.state_dict())
        assert isinstance(ours.decoder.layers[1].mlp.token_dispatcher, GroupTokenDispatcher)
        assert not isinstance(megatrons.decoder.layers[1].mlp.token_dispatcher, GroupTokenDispatcher)
        tokens = torch.randint(1, 256, (6, 64), generator=torch.Generator().manual_seed(0)).cuda()
        positions = torch.arange(64, device="cuda").expand_as(tokens)
        results = []
        for model in (megatrons, ours):
            ROUTING.begin(torch.tensor([0, 1, 2, 2, 1, 0], device="cuda"))
            logits = model(input_ids=tokens, position_ids=positions, attention_mask=None)
            logits.float().square().mean().backward()
            results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        (out_a, grads_a), (out_b, grads_b) = results
        assert torch.allclose(out_a, out_b, atol=1e-5, rtol=0)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=0), name
    finally:
        shutdown_runtime()


def test_the_group_dispatcher_on_the_gpu_equals_megatrons_alltoall():
    torch.multiprocessing.spawn(_dispatcher_worker, args=(free_port(),), nprocs=1)
