"""Qwen3-VL configurations: the built-in tiny one (random init, the default here) and the
published production sizes used for analytic cost estimates.

Architectures are data: `config_names()` lists them, `qwen3vl_config(name)` builds one.
The production dimensions are copied from the public `config.json` of each checkpoint.
"""

from __future__ import annotations

from transformers import Qwen3VLConfig

# Token ids of the built-in tiny tokenizer's special tokens (see models/tokenizer.py).
TINY_VOCAB = 1024
TINY_SPECIAL = {"pad": 0, "image": 1, "video": 2, "vision_start": 3, "vision_end": 4}

_TEXT = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
         "num_key_value_heads", "head_dim", "vocab_size")
_VISION = ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size",
           "deepstack_visual_indexes", "patch_size", "spatial_merge_size", "temporal_patch_size")

CONFIGS: dict[str, dict] = {
    "tiny": {
        "text": dict(hidden_size=128, num_hidden_layers=2, intermediate_size=256,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                     vocab_size=TINY_VOCAB),
        "vision": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                       out_hidden_size=128, deepstack_visual_indexes=[1], patch_size=16,
                       spatial_merge_size=2, temporal_patch_size=2),
        "tie_word_embeddings": True,
    },
    "Qwen3-VL-2B": {
        "text": dict(hidden_size=2048, num_hidden_layers=28, intermediate_size=6144,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                     vocab_size=151936),
        "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                       out_hidden_size=2048, deepstack_visual_indexes=[5, 11, 17],
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2),
        "tie_word_embeddings": True,
    },
    "Qwen3-VL-4B": {
        "text": dict(hidden_size=2560, num_hidden_layers=36, intermediate_size=9728,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     vocab_size=151936),
        "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                       out_hidden_size=2560, deepstack_visual_indexes=[5, 11, 17],
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2),
        "tie_word_embeddings": True,
    },
    "Qwen3-VL-8B": {
        "text": dict(hidden_size=4096, num_hidden_layers=36, intermediate_size=12288,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     vocab_size=151936),
        "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                       out_hidden_size=4096, deepstack_visual_indexes=[8, 16, 24],
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2),
        "tie_word_embeddings": False,
    },
}


def config_names() -> list[str]:
    """Names accepted by `qwen3vl_config`."""
    return list(CONFIGS)


def config_dims(name: str) -> dict:
    """The raw dimensions of a named config (text, vision, tie_word_embeddings)."""
    if name not in CONFIGS:
        raise ValueError(f"Unknown Qwen3-VL config {name!r}; valid: {', '.join(CONFIGS)}")
    return CONFIGS[name]


def qwen3vl_config(name: str = "tiny") -> Qwen3VLConfig:
    """Build a `Qwen3VLConfig` for a named architecture (random init; no download)."""
    dims = config_dims(name)
    kwargs = {}
    if name == "tiny":
        kwargs = dict(image_token_id=TINY_SPECIAL["image"], video_token_id=TINY_SPECIAL["video"],
                      vision_start_token_id=TINY_SPECIAL["vision_start"],
                      vision_end_token_id=TINY_SPECIAL["vision_end"])
    cfg = Qwen3VLConfig(
        text_config=dict(dims["text"], pad_token_id=0 if name == "tiny" else None),
        vision_config=dict(dims["vision"]),
        tie_word_embeddings=dims["tie_word_embeddings"],
        **kwargs,
    )
    return cfg
