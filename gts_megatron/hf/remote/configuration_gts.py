"""Configuration of a Group-then-Scale (GtS) model exported by gts_megatron."""
from transformers import LlamaConfig, Qwen2Config


class _GtsPlan:
    def _set_plan(self, moe_layers, num_experts, languages, language_to_group, group_to_expert, routing, moe_top_k):
        self.moe_layers = list(moe_layers)
        self.num_experts = num_experts
        self.languages = list(languages)
        self.language_to_group = dict(language_to_group or {})
        self.group_to_expert = list(group_to_expert)
        self.routing = routing
        self.moe_top_k = moe_top_k


class GtsConfig(_GtsPlan, LlamaConfig):
    """A Llama config plus the GtS plan: which layers are mixture-of-experts layers, how many
    experts, the language -> group -> expert map, and the routing mode.

    routing "group": every token goes to its language group's expert with weight 1 (pass the
    group, or the language, of each sequence to the model); "learned": the router's top-k.
    """

    model_type = "gts_llama"

    def __init__(self, moe_layers=(), num_experts=1, languages=(), language_to_group=None, group_to_expert=(0,),
                 routing="group", moe_top_k=1, **kwargs):
        self._set_plan(moe_layers, num_experts, languages, language_to_group, group_to_expert, routing, moe_top_k)
        super().__init__(**kwargs)


class GtsQwen2Config(_GtsPlan, Qwen2Config):
    """:class:`GtsConfig` on a Qwen2 base (QKV biases)."""

    model_type = "gts_qwen2"

    def __init__(self, moe_layers=(), num_experts=1, languages=(), language_to_group=None, group_to_expert=(0,),
                 routing="group", moe_top_k=1, **kwargs):
        self._set_plan(moe_layers, num_experts, languages, language_to_group, group_to_expert, routing, moe_top_k)
        super().__init__(**kwargs)
