"""LLaVA-1.5's prompt side: the llava-hf chat template, the expansion of each `<image>` into the
image's placeholder tokens (as transformers' LlavaProcessor), and transformers' CLIP image processor
configured for a model (resize the shortest edge to image_size, centre crop, rescale, CLIP
mean / std: llava-hf's preprocessor_config.json).

A prompt: ``chat_prompt(messages)`` -> text with one ``<image>`` per image (``"USER: <image>\\nWhat is
it? ASSISTANT:"``); ``encode_prompt(tokenizer, text, config)`` -> input_ids with every ``<image>``
expanded to ``config.image_tokens`` ids; ``preprocess_images(images, config)`` -> pixel_values
[n, C, S, S] float32.
"""

from __future__ import annotations

import numpy as np

IMAGE_TOKEN = "<image>"

# llava-hf/llava-1.5-*-hf's chat_template (verbatim)
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def chat_prompt(messages, add_generation_prompt: bool = True) -> str:
    """`CHAT_TEMPLATE` rendered in Python. messages: [{"role": "system" | "user" | "assistant",
    "content": [{"type": "image"}, {"type": "text", "text": ...}, ...]}] (a plain string content is one
    text part). Per message: "ROLE: " (not for system), "<image>\\n" per image, then each text + " "."""
    out = []
    for m in messages:
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        if m["role"] != "system":
            out.append(m["role"].upper() + ": ")
        out += ["<image>\n" for p in parts if p["type"] == "image"]
        out += [p["text"] + " " for p in parts if p["type"] == "text"]
    if add_generation_prompt:
        out.append("ASSISTANT:")
    return "".join(out)


def expand_image_tokens(text: str, image_tokens: int, image_token: str = IMAGE_TOKEN) -> str:
    """`text` with every `image_token` repeated `image_tokens` times (LlavaProcessor's expansion)."""
    return text.replace(image_token, image_token * int(image_tokens))


def encode_prompt(tokenizer, text: str, config, *, image_token: str = IMAGE_TOKEN) -> np.ndarray:
    """input_ids [T] int32 of `text` with each `<image>` expanded to ``config.image_tokens`` placeholder
    ids (`config.image_token_id`; the tokenizer's special tokens added as it is configured, as LlavaProcessor)."""
    ids = np.asarray(tokenizer(expand_image_tokens(text, config.image_tokens, image_token))["input_ids"], np.int32)
    n_img = text.count(image_token)
    if int((ids == config.image_token_id).sum()) != n_img * config.image_tokens:
        raise ValueError(f"the tokenizer does not map {image_token!r} to image_token_id {config.image_token_id}")
    return ids


def image_processor(config):
    """transformers' CLIP image processor, the PIL one (CLIPImageProcessor's default needs torchvision),
    for `config`'s image size: resize the shortest edge to image_size (bicubic), centre crop
    image_size x image_size, rescale 1/255, CLIP mean / std."""
    from transformers import CLIPImageProcessorPil

    S = int(config.image_size)
    return CLIPImageProcessorPil(
        size={"shortest_edge": S},
        crop_size={"height": S, "width": S},
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        resample=3,
    )


def preprocess_images(images, config, processor=None) -> np.ndarray:
    """PIL images (or HWC uint8 arrays) -> pixel_values [n, C, S, S] float32 (`image_processor`)."""
    processor = processor if processor is not None else image_processor(config)
    pixels = np.asarray(processor(images=list(images), return_tensors="np")["pixel_values"], np.float32)
    if pixels.shape[1:] != tuple(config.pixel_shape):
        raise ValueError(f"image processor gave {pixels.shape[1:]}, the model takes {config.pixel_shape}")
    return pixels


class LlavaPrompts:
    """Chat examples of LLaVA-1.5 for the family contract (`models.contract.PromptFormat`): one user
    turn "USER: <image>\\n... {question} ASSISTANT:" (`chat_prompt`: images first, as llava-hf's
    template renders them; `<image>` markers in the question are dropped), each `<image>` expanded
    to `image_tokens` ids (BOS as the tokenizer adds it), the response " {response}</s>" (loss_mask 1
    there), pixel_values [n, C, S, S] (`image_processor`) and image_grid_thw [n, 3] of ones (one
    pixel row per image: `model.LlavaImages`). Token ids come from the tokenizer (a codec is made
    before the model, whose config then takes them: `config_ids`)."""

    family = "llava"
    eos_token = "</s>"
    special_tokens = (IMAGE_TOKEN, "</s>")  # what a tokenizer needs beyond text (the demo's adds them)

    def __init__(self, config):
        self.config = config  # a LlavaConfig: image_size, image_tokens (ids are the tokenizer's)

    def config_ids(self, tokenizer) -> dict:
        """The hf config's special-token ids from `tokenizer`: `image_token_index`."""
        return {"image_token_index": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}

    def banned_ids(self, tokenizer) -> list[int]:
        """Token ids a response must not contain: `<image>`."""
        return [tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)]

    def image_processor(self, image=None):
        """The CLIP processor of the model's image size (`image_processor`); `image` (the run's image
        section) is not read: LLaVA's images are one fixed size."""
        return image_processor(self.config)

    def processor_config(self, image_processor) -> dict:
        """preprocessor_config.json of the CLIP processor (llava-hf's classes, readable without torchvision)."""
        import json

        proc = json.loads(image_processor.to_json_string())
        proc.update(image_processor_type="CLIPImageProcessor", processor_class="LlavaProcessor")
        return proc

    def images(self, image_processor, images) -> tuple[np.ndarray, np.ndarray]:
        """(pixel_values [n, C, S, S] float32, image_grid_thw [n, 3] int32 of ones) of PIL images."""
        pixels = preprocess_images(images, self.config, image_processor)
        return pixels, np.ones((len(pixels), 3), np.int32)

    def prepare_image(self, image_processor, image):
        """`image` unchanged: this format processes its images in `example` (one fixed size, cheap)."""
        return image

    def example(self, tokenizer, image_processor, question: str, images, response: str | None = None) -> dict:
        from grlhfv_jax import processing

        images = [processing.load_image(im) for im in images]
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if question.count(IMAGE_TOKEN) == len(images):
            question = question.replace(IMAGE_TOKEN, "")
        text = chat_prompt(
            [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]}]
        )
        ids = np.asarray(tokenizer(expand_image_tokens(text, self.config.image_tokens))["input_ids"], np.int32)
        if int((ids == image_id).sum()) != len(images) * self.config.image_tokens:
            raise ValueError(
                f"{int((ids == image_id).sum())} {IMAGE_TOKEN} tokens for {len(images)} images of "
                f"{self.config.image_tokens} tokens each"
            )
        resp = np.zeros((0,), np.int32)
        if response is not None:
            resp = np.asarray(
                tokenizer.encode(" " + response, add_special_tokens=False)
                + [tokenizer.convert_tokens_to_ids(self.eos_token)],
                np.int32,
            )
            if (resp == image_id).any():
                raise ValueError(f"response text contains {IMAGE_TOKEN}; images belong in the prompt")
        input_ids = np.concatenate([ids, resp]).astype(np.int32)
        pixels, grid = (
            self.images(image_processor, images)
            if images
            else (np.zeros((0,) + tuple(self.config.pixel_shape), np.float32), np.zeros((0, 3), np.int32))
        )
        return {
            "input_ids": input_ids,
            "loss_mask": np.concatenate([np.zeros(len(ids), np.int32), np.ones(len(resp), np.int32)]),
            "mm_token_type_ids": (input_ids == image_id).astype(np.int32),
            "pixel_values": pixels,
            "image_grid_thw": grid,
        }
