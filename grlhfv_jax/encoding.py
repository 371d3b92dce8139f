"""Text and images -> model inputs: the tokenizer + image processor of a run (`Codec`), the chat
prompts of the policy and the GRM, and static-shape batches of examples.

Batches have fixed shapes (`max_len` from the config, a fixed number of rows) so that each
jitted function compiles once per stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from grlhfv_jax import config as config_schema
from grlhfv_jax import processing
from grlhfv_jax.config import sections
from grlhfv_jax.models.qwen2_vl.prompts import QwenPrompts
from grlhfv_jax.rl import grm_reward


def image_processor(image):
    """The Qwen-VL image processor of `config.image` (a validated section, `config.sections.IMAGE`)."""
    return QwenPrompts().image_processor(image)


@dataclasses.dataclass
class Codec:
    """Tokenizer + image processor + the model family's prompt format (`models.contract.PromptFormat`:
    chat examples with image placeholders, special tokens) + the ids the stages need."""

    tokenizer: Any
    image_processor: Any
    pad_id: int
    eos_id: int  # the family's end of an assistant turn (Qwen: <|im_end|>, LLaVA: </s>)
    grm_template: str = grm_reward.GRM_TEMPLATE
    prompts: Any = dataclasses.field(default_factory=QwenPrompts)

    @classmethod
    def from_dirs(cls, tokenizer_dir: str, image, grm_template: str | None = None, prompts=None) -> Codec:
        """`image`: a validated image section (`config.image`), or a dict of its keys (the entry points
        serve.py, evaluate.py and tests: checked here against config.sections.IMAGE). `prompts`: the
        family's prompt format (default Qwen-VL's; `models.llava.LlavaPrompts(config)` for LLaVA)."""
        if not isinstance(image, config_schema.Frozen):
            image = config_schema.typed_section(sections.IMAGE, image, "image")
        prompts = prompts if prompts is not None else QwenPrompts()
        tok = processing.load_tokenizer(tokenizer_dir)
        proc = prompts.image_processor(image)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        return cls(
            tok,
            proc,
            int(pad),
            int(tok.convert_tokens_to_ids(prompts.eos_token)),
            grm_template or grm_reward.GRM_TEMPLATE,
            prompts,
        )

    def special_ids(self) -> dict:
        """The family's hf config ids of the special tokens (`prompts.config_ids`) + eos / pad ids."""
        return dict(self.prompts.config_ids(self.tokenizer), eos_token_id=self.eos_id, pad_token_id=self.pad_id)

    def banned_ids(self) -> list[int]:
        """Token ids a response must not contain (image placeholders and markers of the family)."""
        return self.prompts.banned_ids(self.tokenizer)

    def example(self, question: str, image, response: str | None = None) -> dict:
        return self.prompts.example(self.tokenizer, self.image_processor, question, [image], response)

    def prepare_image(self, image):
        """`image` ready for many examples: the family's processor runs once for all of them
        (`prompts.prepare_image`; the examples are the same)."""
        return self.prompts.prepare_image(self.image_processor, image)

    def grm_user_text(self, question: str, response_1: str, response_2: str) -> str:
        return grm_reward.build_grm_prompt(question, response_1, response_2, template=self.grm_template)

    def grm_example(self, question: str, image, response_1: str, response_2: str, judgment: str | None = None) -> dict:
        return self.example(self.grm_user_text(question, response_1, response_2), image, judgment)

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
        """Generated token rows -> text, cut at each row's length, special tokens dropped."""
        return [
            self.tokenizer.decode([int(t) for t in row[:n] if t != self.eos_id], skip_special_tokens=True)
            for row, n in zip(np.asarray(tokens), np.asarray(lengths))
        ]


def batch(examples: Sequence[dict], codec: Codec, *, side: str, max_len: int, rows: int | None = None) -> dict:
    """Collates `examples` to [rows, max_len]; missing rows repeat example 0 with a zero loss mask.

    The fill rows keep every shape static (their forward is well defined; callers ignore their
    outputs and mask them out of losses). Returns numpy arrays plus `valid [rows]` (1 for real rows).
    """
    rows = rows or len(examples)
    if len(examples) > rows:
        raise ValueError(f"batch: {len(examples)} examples > {rows} rows")
    fill = rows - len(examples)
    out = processing.collate(list(examples) + [examples[0]] * fill, pad_id=codec.pad_id, side=side, max_len=max_len)
    valid = np.array([1] * len(examples) + [0] * fill, np.int32)
    if fill:  # fill rows: real tokens (well-defined forward), no loss, ignored outputs
        out["loss_mask"][len(examples) :] = 0
    out["valid"] = valid
    out.pop("mm_token_type_ids", None)
    return out


def pair_examples(codec: Codec, records: Sequence[dict]) -> list[dict]:
    """Interleaved (chosen, rejected) examples of preference records: the human label's answer
    first (the row layout of `steps.bt_rm_step` and `steps.dpo_step`)."""
    ex = []
    for r in records:
        w, l = ("response_1", "response_2") if int(r["overall_response"]) == 1 else ("response_2", "response_1")
        ex += [codec.example(r["question"], r["image"], r[w]), codec.example(r["question"], r["image"], r[l])]
    return ex
