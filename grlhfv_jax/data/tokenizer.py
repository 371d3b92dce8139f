"""Train a small Qwen2-VL-style tokenizer offline (byte-level BPE + Qwen2-VL special tokens).

The saved folder loads with `transformers.AutoTokenizer.from_pretrained(out_dir)` as a fast
tokenizer: same pre-tokenizer, normalizer and decoder as Qwen2's tokenizer, the special tokens of
Qwen2-VL appended after the learned vocabulary (as in the real checkpoint), eos `<|im_end|>`,
pad `<|endoftext|>`, and Qwen2-VL's chat template (images rendered as
`<|vision_start|><|image_pad|><|vision_end|>`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen2's pre-tokenizer split (transformers/models/qwen2/tokenization_qwen2.py).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2-VL's added tokens, in the checkpoint's id order (151643 ... 151656 there).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen2-VL-Instruct's chat template: a default system turn, string or list content, images and
# videos as vision blocks (optionally numbered with add_vision_id), generation prompt at the end.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_bpe(texts: Iterable[str], vocab_size: int, special_tokens=SPECIAL_TOKENS) -> Tokenizer:
    """A Qwen2-style byte-level BPE trained on `texts` with `vocab_size - len(special_tokens)` entries,
    then the special tokens appended (so the total is at most `vocab_size`)."""
    n_learned = vocab_size - len(special_tokens)
    n_bytes = len(pre_tokenizers.ByteLevel.alphabet())
    if n_learned < n_bytes:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: need at least {n_bytes + len(special_tokens)} "
            f"(256 byte tokens + {len(special_tokens)} special tokens)"
        )
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_learned,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tok


def train_tokenizer(
    texts: Iterable[str], out_dir: str, vocab_size: int = 2048, extra_special_tokens: Sequence[str] = ()
) -> tuple[str, dict[str, int]]:
    """Train a byte-level BPE on `texts` and save a Qwen2-VL-style HF tokenizer folder.
    `extra_special_tokens` (another family's, e.g. LLaVA's `<image>`, `</s>`) follow Qwen2-VL's.

    Args:
      texts: training strings (any iterable; read once).
      out_dir: folder to write (created); afterwards `AutoTokenizer.from_pretrained(out_dir)` works offline.
      vocab_size: total size including the 14 special tokens (the trainer may learn fewer merges
        on a small corpus; the returned ids are the truth).
    Returns:
      (out_dir, special_ids) where special_ids maps every special token string to its id, plus the
      keys "eos_token_id", "pad_token_id", "image_token_id", "vision_start_token_id",
      "vision_end_token_id", "video_token_id" and "vocab_size" (len of the tokenizer).
    """
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS + tuple(t for t in extra_special_tokens if t not in SPECIAL_TOKENS)
    tok = build_bpe(texts, vocab_size, specials)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        extra_special_tokens=[t for t in specials if t not in (EOS_TOKEN, PAD_TOKEN)],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir)
    ids = {t: tok.token_to_id(t) for t in specials}
    ids.update(
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
    )
    return out_dir, ids
