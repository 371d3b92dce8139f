"""Qwen-VL's prompt side for the family contract (`models.contract.PromptFormat`): the Qwen2-VL chat
format with `<|vision_start|><|image_pad|><|vision_end|>` image blocks (`grlhfv_jax.processing`)."""

from __future__ import annotations

import json

import numpy as np

from grlhfv_jax import processing

# the hf config keys of the special tokens a model of this family is built with, and their token text
CONFIG_TOKENS = {
    "image_token_id": processing.IMAGE_PAD,
    "vision_start_token_id": processing.VISION_START,
    "vision_end_token_id": processing.VISION_END,
    "video_token_id": "<|video_pad|>",
}


class QwenPrompts:
    """Chat examples of Qwen2-VL / Qwen2.5-VL: `processing.chat_prompt` + `processing.encode_example`
    (input_ids with each image's `<|image_pad|>` tokens expanded, loss_mask, pixel_values [N, C*t*p*p],
    image_grid_thw [n, 3]); an assistant turn ends with `<|im_end|>`."""

    family = "qwen2_vl"
    eos_token = processing.IM_END
    special_tokens = ()  # beyond the demo tokenizer's (Qwen2-VL's own: data.tokenizer)

    def config_ids(self, tokenizer) -> dict:
        """The hf config's special-token ids from `tokenizer` (`CONFIG_TOKENS`)."""
        return {k: tokenizer.convert_tokens_to_ids(t) for k, t in CONFIG_TOKENS.items()}

    def banned_ids(self, tokenizer) -> list[int]:
        """Token ids a response must not contain: the image and vision markers."""
        return list(self.config_ids(tokenizer).values())

    def image_processor(self, image):
        """Qwen2VLImageProcessor of a validated `config.image` section."""
        return processing.load_image_processor(
            image.processor_dir,
            min_pixels=image.min_pixels,
            max_pixels=image.max_pixels,
            patch_size=image.patch_size,
            merge_size=image.merge_size,
            temporal_patch_size=image.temporal_patch_size,
        )

    def processor_config(self, image_processor) -> dict:
        """preprocessor_config.json of `image_processor` (with the keys older readers take)."""
        proc = json.loads(image_processor.to_json_string())
        size = proc.get("size") or {}
        proc.update(
            image_processor_type="Qwen2VLImageProcessor",
            processor_class="Qwen2VLProcessor",
            min_pixels=int(size["shortest_edge"]),
            max_pixels=int(size["longest_edge"]),
        )  # older readers
        return proc

    def images(self, image_processor, images):
        """(pixel_values [N, C*t*p*p] float32, image_grid_thw [n, 3] int32) of PIL images."""
        out = image_processor(images=list(images), return_tensors="np")
        return np.asarray(out["pixel_values"], np.float32), np.asarray(out["image_grid_thw"]).reshape(-1, 3)

    def prepare_image(self, image_processor, image):
        """`image` with its patches computed once (`processing.prepare_image`): examples that repeat
        it (a judge's pairs of one prompt) do not run the processor again."""
        if isinstance(image, processing.PreparedImage) and image.patches(image_processor) is not None:
            return image
        return processing.prepare_image(image_processor, image)

    def example(self, tokenizer, image_processor, question: str, images, response: str | None = None) -> dict:
        """One user turn with `images` (their blocks where the question has `<image>` markers, else first)
        and optionally the assistant's `response` (+ `<|im_end|>`, where loss_mask is 1)."""
        text = processing.chat_prompt(question, num_images=len(images), tokenizer=tokenizer)
        return processing.encode_example(tokenizer, image_processor, text, images, response)
