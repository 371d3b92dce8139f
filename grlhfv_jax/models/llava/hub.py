"""LLaVA parameter names and shapes on the hub (`models.weights` reads and writes with these).

We write the layout transformers' `LlavaForConditionalGeneration.save_pretrained` writes (and the
llava-hf checkpoints use): `language_model.model.*`, `language_model.lm_head.weight`,
`vision_tower.*`, `multi_modal_projector.*`. Read as well: transformers' state_dict names
(`model.language_model.*`, `model.vision_tower.*`, `model.multi_modal_projector.*`, `lm_head.*`) and
the older CLIP prefix `vision_tower.vision_model.*` (`HUB_ALIASES`).
NNX path -> hub key: ``visual.`` dropped, ``model.`` -> ``language_model.model.``, ``lm_head`` ->
``language_model.lm_head``, ``score_head`` -> ``score``, ``kernel`` -> ``weight`` (ours [in, out],
the hub's [out, in]; the patch embedding's is the Conv2d weight [E, C, p, p] flattened).
"""

from __future__ import annotations

import re

# other spellings -> ours, first matching prefix wins (models.weights._canonical)
HUB_ALIASES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("vision_tower.vision_model.", "vision_tower."),
)

PATCH_EMBED = "vision_tower.embeddings.patch_embedding.weight"


def hub_key(path) -> str:
    """The hub tensor name of the parameter at NNX `path` (a tuple of names / indices)."""
    key = ".".join(str(p) for p in path)
    key = re.sub(r"^visual\.", "", key)
    key = re.sub(r"^model\.", "language_model.model.", key)
    key = re.sub(r"^lm_head\.", "language_model.lm_head.", key)
    key = re.sub(r"^score_head\.", "score.", key)
    return re.sub(r"\.kernel$", ".weight", key)


def hub_shape(key: str, shape, is_kernel: bool, cfg) -> tuple:
    """The shape on disk of tensor `key` whose NNX value has `shape`."""
    if not is_kernel:
        return tuple(shape)
    if key == PATCH_EMBED:
        return (shape[1], cfg.in_channels, cfg.patch_size, cfg.patch_size)
    return (shape[1], shape[0])
