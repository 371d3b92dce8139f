"""The trained Qwen2-VL-style tokenizer: loads offline via AutoTokenizer, round trips, chat template."""

import pytest
from transformers import AutoTokenizer

from grlhfv_jax.data.tokenizer import SPECIAL_TOKENS, train_tokenizer

CORPUS = [
    "The red circle is above the blue square.",
    "A green triangle sits left of a yellow star!",
    "What color is the shape? It's red, and it is large.",
    "Response 1 is better than Response 2. \\boxed{7, 3}",
] * 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out, ids = train_tokenizer(CORPUS, str(tmp_path_factory.mktemp("tok")), vocab_size=400)
    return out, ids, AutoTokenizer.from_pretrained(out)


def test_loads_as_fast_tokenizer_with_qwen_specials(trained):
    out, ids, tok = trained
    assert tok.is_fast
    assert ids["vocab_size"] == len(tok) <= 400
    # Special tokens come after the learned vocabulary, in Qwen2-VL's order, as in the checkpoint.
    n = len(tok) - len(SPECIAL_TOKENS)
    for k, t in enumerate(SPECIAL_TOKENS):
        assert ids[t] == n + k == tok.convert_tokens_to_ids(t)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == ids["eos_token_id"]
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == ids["pad_token_id"]
    assert ids["image_token_id"] == ids["<|image_pad|>"]
    assert tok.bos_token is None


def test_special_tokens_are_single_ids(trained):
    _, ids, tok = trained
    for t in SPECIAL_TOKENS:
        assert tok.encode(t, add_special_tokens=False) == [ids[t]]
        # also inside running text, with no space around it
        enc = tok.encode(f"red{t}blue", add_special_tokens=False)
        assert enc.count(ids[t]) == 1
        assert enc == tok.encode("red", add_special_tokens=False) + [ids[t]] + tok.encode(
            "blue", add_special_tokens=False
        )


@pytest.mark.parametrize(
    "text",
    [
        "The red circle is above the blue square.",
        "unseen words: zebra, quokka, naïve café 日本語 😀\n\n\ttabs  and  spaces ",
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which?<|im_end|>\n",
    ],
)
def test_round_trip(trained, text):
    _, _, tok = trained
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.encode(text, add_special_tokens=True) == ids  # no BOS / EOS added


def test_learned_merges_compress_training_text(trained):
    _, _, tok = trained
    s = "The red circle is above the blue square."
    assert len(tok.encode(s, add_special_tokens=False)) < len(s.encode()) // 2


def test_chat_template_matches_qwen2_vl_string(trained):
    _, _, tok = trained
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == expected

    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]},
        {"role": "assistant", "content": "No."},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|vision_end|>Same?<|im_end|>\n"
        "<|im_start|>assistant\nNo.<|im_end|>\n"
    )
    assert tok.apply_chat_template(msgs, tokenize=False) == expected
    numbered = tok.apply_chat_template(msgs, tokenize=False, add_vision_id=True)
    assert "Picture 1: <|vision_start|>" in numbered and "Picture 2: <|vision_start|>" in numbered


def test_vocab_too_small_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_tokenizer(CORPUS, str(tmp_path), vocab_size=100)
