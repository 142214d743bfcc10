"""Where the pinned Unsloth release and transformers 5 disagree, mended in the training process before loading.

Qwen2.5-VL through ``fast_inference``: Unsloth builds the trainable model from vLLM's weights and recognises the
model by ``get_model_type(config)``, which prefers ``vision_config.model_type``. transformers 5 names Qwen2.5-VL's
vision config ``qwen2_5_vl_vision``; ``unsloth_zoo.empty_model`` knows ``qwen3_vl_vision`` but only ``qwen2_5_vl``
for 2.5, so it splits the vision tower's fused ``qkv`` like a language layer's ``qkv_proj`` (each block's
``qkv`` ends up one third wide: ``shape '[128, 3, 16, -1]' is invalid for input of size 163840`` in the first
training forward) and counts the tower's blocks by the text depth (28 of 32). Mapping the transformers-5 name
back to the one it handles fixes both; nothing changes once Unsloth lists the name itself.
"""

from __future__ import annotations

from types import ModuleType

# transformers-5 vision-config names that unsloth_zoo 2026.10.9 handles under their older name.
VISION_TYPE_ALIASES = {"qwen2_5_vl_vision": "qwen2_5_vl"}


def alias_vision_model_types(empty_model: ModuleType) -> list[str]:
    """Make ``empty_model.get_model_type`` (``unsloth_zoo.empty_model``, which looks the name up at call time)
    answer the older name for each alias it does not know yet; returns the aliases applied (none the second time).

    >>> import types
    >>> fake = types.ModuleType("empty_model")
    >>> fake.QWEN_VL_MERGED_QKV_TYPES = ("qwen2_5_vl", "qwen3_vl_vision")
    >>> fake.get_model_type = lambda config: config
    >>> alias_vision_model_types(fake), fake.get_model_type("qwen2_5_vl_vision"), fake.get_model_type("qwen3_vl_vision")
    (['qwen2_5_vl_vision'], 'qwen2_5_vl', 'qwen3_vl_vision')
    >>> alias_vision_model_types(fake)
    []
    """
    known = set(getattr(empty_model, "QWEN_VL_MERGED_QKV_TYPES", ()))
    original = empty_model.get_model_type
    if getattr(original, "_vlmrl_aliases", None) is not None:
        return []
    aliases = {new: old for new, old in VISION_TYPE_ALIASES.items() if new not in known and old in known}
    if not aliases:
        return []

    def get_model_type(config):
        model_type = original(config)
        return aliases.get(model_type, model_type)

    get_model_type._vlmrl_aliases = aliases
    empty_model.get_model_type = get_model_type
    return sorted(aliases)


def patch_unsloth_for_fast_inference(log=print) -> None:
    """Apply the mends above to the installed ``unsloth_zoo`` (a no-op where it already knows the names, and where
    ``unsloth_zoo`` is absent: Unsloth itself cannot load then, and that error is the one worth reading)."""
    try:
        from unsloth_zoo import empty_model
    except ModuleNotFoundError:
        return

    applied = alias_vision_model_types(empty_model)
    if applied:
        log(f"unsloth_zoo: vision config names {applied} read as {[VISION_TYPE_ALIASES[a] for a in applied]} "
            "(vlmrl_pipeline.core.model.unsloth_compat)")
