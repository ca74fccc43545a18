"""`gts export-hf` of a GtS MoE checkpoint: a folder transformers loads with
``trust_remote_code=True`` (the code in :mod:`gts_megatron.hf.remote`: a Llama with MoE MLPs
in the planned layers, the language -> group -> expert map, group or learned routing).

The export checks itself: for both routing modes, transformers' logits must equal the megatron
model's within a tolerance and greedy generation must produce the same tokens.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from gts_megatron.errors import GtsError
from gts_megatron.hf.config_map import hf_config_from_model, token_ids
from gts_megatron.hf.logits import megatron_logits
from gts_megatron.hf.weights import megatron_to_hf, write_safetensors

REMOTE_FILES = ("configuration_gts.py", "modeling_gts.py")
ROUTINGS = ("group", "learned")


def _our_logits(model, tokens: torch.Tensor, groups: torch.Tensor, vocab: int) -> torch.Tensor:
    from gts_megatron.model.gts import ROUTING

    ROUTING.begin(groups)
    return megatron_logits(model, tokens, vocab)


def _our_greedy(model, tokens: torch.Tensor, groups: torch.Tensor, vocab: int, new: int) -> torch.Tensor:
    for _ in range(new):  # no KV cache: the whole sequence each step
        next_token = _our_logits(model, tokens, groups, vocab)[:, -1].argmax(-1)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
    return tokens


def check_export(folder: Path, trained, tolerance: float, log) -> dict:
    """Compare the exported folder (through transformers) with the megatron model under both
    routings: largest logit difference, and whether greedy generation agrees."""
    from transformers import AutoModelForCausalLM

    from gts_megatron.engine.checkpoint import load_trained

    cfg, plan = trained.config, trained.plan
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, min(32, cfg.max_seq_length - 8)), generator=generator)
    groups = torch.tensor([0, len(plan.group_to_expert) - 1])
    results = {}
    for routing in ROUTINGS:
        ours = load_trained(trained, routing)
        theirs = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32)
        theirs.config.routing, theirs.config.moe_top_k = routing, trained.topk(routing)
        theirs.eval()
        with torch.no_grad():
            diff = float((_our_logits(ours, tokens, groups, cfg.vocab_size)
                          - theirs(tokens, group_ids=groups).logits.float()).abs().max())
            prompt = tokens[:, :8]
            mine = _our_greedy(ours, prompt, groups, cfg.vocab_size, 8)
            hf = theirs.generate(prompt, group_ids=groups, max_new_tokens=8, do_sample=False, min_new_tokens=8,
                                 pad_token_id=0)
        same = torch.equal(mine, hf)
        log(f"{routing} routing: max |logit diff| vs transformers {diff:.2e}; greedy generation "
            f"{'identical' if same else 'DIFFERENT'}")
        results[routing] = {"max_abs_logit_diff": diff, "greedy_identical": same}
        if not diff <= tolerance or not same:
            raise GtsError(f"{folder}: the exported model does not reproduce the checkpoint under {routing} routing "
                           f"(logit difference {diff:.2e}, greedy generation "
                           f"{'identical' if same else 'different'}); nothing was written")
    return results


def export_gts(trained, tmp: Path, side: Optional[Path], tolerance: float, log) -> dict:
    """Write the GtS checkpoint ``trained`` (contracts.trained.TrainedModel) into ``tmp`` and check it."""
    from gts_megatron.engine.checkpoint import load_trained, unwrap

    cfg, plan = trained.config, trained.plan
    routing = trained.routing("auto")
    model = load_trained(trained, routing)
    state = megatron_to_hf(unwrap(model).state_dict(), cfg, plan.moe_layers, plan.num_experts)
    # Llama- and Mistral-based GtS models share the Llama code; Qwen2's has its QKV biases
    base, name = ("Qwen2ForCausalLM", "GtsQwen2") if cfg.qkv_bias else ("LlamaForCausalLM", "Gts")
    config = hf_config_from_model(base, cfg, token_ids(side))
    config.update(
        architectures=[f"{name}ForCausalLM"], model_type="gts_qwen2" if cfg.qkv_bias else "gts_llama",
        auto_map={"AutoConfig": f"configuration_gts.{name}Config",
                  "AutoModelForCausalLM": f"modeling_gts.{name}ForCausalLM"},
        moe_layers=sorted(plan.moe_layers), num_experts=plan.num_experts, languages=list(plan.languages),
        language_to_group=dict(plan.language_to_group), group_to_expert=list(plan.group_to_expert),
        routing=routing, moe_top_k=trained.topk(routing))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    remote = Path(__file__).parent / "remote"
    for name in REMOTE_FILES:
        shutil.copy2(remote / name, tmp / name)
    write_safetensors(state, tmp)
    log(f"GtS model: {plan.num_experts} experts in layers {sorted(plan.moe_layers)}, {routing} routing; "
        f"load it with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)")
    return check_export(tmp, trained, tolerance, log)
