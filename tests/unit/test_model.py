"""The Llama-style GPTModel on one gloo process: shapes, parameter count, SDPA attention."""
import pytest
import torch

from gts_megatron.config import load_config
from gts_megatron.model.llama import SDPAttention, build_model, padded_vocab_size, transformer_config
from gts_megatron.model.sizes import count_parameters
from gts_megatron.runtime.distributed import init_runtime, seed_everything, shutdown_runtime
from tests.conftest import TINY


@pytest.fixture(scope="module")
def runtime():
    cfg = load_config(TINY)
    rt = init_runtime(cfg.parallel, seed=1)
    yield rt
    shutdown_runtime()


def build(cfg, seed=3):
    seed_everything(seed)
    return build_model(cfg.model, transformer_config(cfg.model, cfg.parallel))


def logits(model, tokens):
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens, position_ids=positions, attention_mask=None)


@pytest.mark.parametrize("overrides", [[], ["model.tie_embeddings=false"], ["model.num_query_groups=null"],
                                       ["model.vocab_size=300"]])
def test_parameter_count_matches_formula(runtime, overrides):
    cfg = load_config(TINY, overrides)
    model = build(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg.model)


def test_llama_1b_preset_is_1b_plus(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("model: llama-1b\n")
    model = load_config(path).model
    assert model.dtype == "bf16" and model.num_query_groups == 8
    assert 1.2e9 < count_parameters(model) < 1.3e9


def test_llama_shape(runtime):
    model = build(load_config(TINY))
    layer = model.decoder.layers[0]
    assert isinstance(layer.self_attention.core_attention, SDPAttention)
    assert all(not name.endswith("bias") for name, _ in model.named_parameters())
    # GQA: 4 query heads of 16 + 2 key/value groups x 2 (K and V) of 16 -> 128 fused QKV rows
    assert tuple(layer.self_attention.linear_qkv.weight.shape) == (128, 64)
    assert tuple(layer.mlp.linear_fc1.weight.shape) == (256, 64)  # SwiGLU: gate and up fused
    assert type(model.decoder.final_layernorm).__name__ == "RMSNorm"
    assert model.embedding.word_embeddings.weight.shape[0] == padded_vocab_size(256) == 256


def test_sdpa_equals_megatron_local_attention(runtime):
    tokens = torch.randint(0, 256, (3, 48), generator=torch.Generator().manual_seed(0))
    sdpa = logits(build(load_config(TINY)), tokens)
    local = logits(build(load_config(TINY, ["model.attention=local"])), tokens)
    assert sdpa.shape == (3, 48, 256)
    assert torch.allclose(sdpa, local, atol=1e-5, rtol=0)


def test_attention_is_causal(runtime):
    model = build(load_config(TINY))
    tokens = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % 256
    a, b = logits(model, tokens), logits(model, changed)
    assert torch.equal(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_state_names_are_the_keys_of_a_real_dense_and_moe_model(runtime):
    from gts_megatron.config import MoEConfig
    from gts_megatron.contracts.plan import Plan
    from gts_megatron.model import state_names as names
    from gts_megatron.model.gts import build_moe_model

    cfg = load_config(TINY, ["model.tie_embeddings=false"])
    dense = build(cfg).state_dict()
    assert {names.EMBEDDING, names.FINAL_NORM, names.OUTPUT_LAYER} <= set(dense)
    assert all(names.layer_prefix(1) + w in dense for w in names.FFN_WEIGHTS)
    plan = Plan(languages=["a", "b", "c"], language_to_group={"a": 0, "b": 1, "c": 1}, group_to_expert=[0, 1],
                num_experts=2, moe_layers=[1])
    moe, _ = build_moe_model(cfg.model, cfg.parallel, MoEConfig(plan="plan.json", stage="group"), plan)
    keys = [k for k in moe.state_dict() if not k.endswith("_extra_state")]
    assert names.router_key(1) in keys and names.router_key(0) not in keys
    experts = {k for k in keys if names.expert_of(k) is not None}
    assert experts == {names.expert_prefix(1, e) + w.removeprefix("mlp.") for e in (0, 1) for w in names.FFN_WEIGHTS}
    # expansion reads each expert tensor from the dense MLP tensor of its layer, with the same shape
    for key in experts:
        assert dense[names.dense_source(key)].shape == moe.state_dict()[key].shape
        assert names.expert_of(names.with_expert(key, 1 - names.expert_of(key))) == 1 - names.expert_of(key)
    assert all(names.dense_source(k) == k for k in keys if names.expert_of(k) is None)
