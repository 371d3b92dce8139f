"""processing.py against hand-built expectations: chat text, image-token expansion, masks, padding."""

import numpy as np
import pytest
from PIL import Image

from grlhfv_jax import processing as P
from grlhfv_jax.data.tokenizer import train_tokenizer

CORPUS = [
    "What colour is the shape? It is red.",
    "Which one is bigger, the circle or the square?",
    "You are a helpful assistant. Describe the image.",
] * 30
SYS = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out, _ = train_tokenizer(CORPUS, str(tmp_path_factory.mktemp("tok")), vocab_size=320)
    return P.load_tokenizer(out)


@pytest.fixture(scope="module")
def ip():
    # 28x28 pixels per merged token; 4..16 merged tokens per image.
    return P.load_image_processor(None, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)


def rand_image(h, w, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def ids_of(tok, *pieces):
    """Hand-built id sequence: strings are encoded, ints are taken as ids."""
    out = []
    for p in pieces:
        out += [p] if isinstance(p, int) else tok.encode(p, add_special_tokens=False)
    return out


def special(tok, t):
    return tok.convert_tokens_to_ids(t)


# ----------------------------------------------------------------------------- chat text


def test_chat_prompt_hand_written_and_template_agree(tok):
    expected = (
        SYS + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which one?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert P.chat_prompt("Which one?") == expected
    assert P.chat_prompt("Which one?", tokenizer=tok) == expected
    expected2 = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nA "
        "<|vision_start|><|image_pad|><|vision_end|> vs <|vision_start|><|image_pad|><|vision_end|>?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    for t in (None, tok):
        assert P.chat_prompt("A <image> vs <image>?", num_images=2, system="Be brief.", tokenizer=t) == expected2
    assert P.chat_prompt("no image", num_images=0) == (
        SYS + "<|im_start|>user\nno image<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="1 '<image>' markers but num_images=2"):
        P.chat_prompt("x <image>", num_images=2)


# ----------------------------------------------------------------------------- encode_example


def test_encode_example_ids_masks_pixels(tok, ip):
    img = rand_image(50, 90)
    ref = ip(images=[Image.fromarray(img)])  # the image processor's own output
    grid = np.asarray(ref["image_grid_thw"])
    k = int(np.prod(grid[0])) // ip.merge_size**2
    assert k == 2 * 3  # 50x90 -> 56x84 pixels -> 4x6 patches -> 2x3 merged tokens

    ex = P.encode_example(tok, ip, P.chat_prompt("What colour?"), [img], response="It is red.")
    vs, ve, pad, end = (special(tok, t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|im_end|>"))
    prompt = ids_of(
        tok, SYS + "<|im_start|>user\n", vs, *[pad] * k, ve, "What colour?<|im_end|>\n<|im_start|>assistant\n"
    )
    resp = ids_of(tok, "It is red.", end)
    np.testing.assert_array_equal(ex["input_ids"], prompt + resp)
    np.testing.assert_array_equal(ex["loss_mask"], [0] * len(prompt) + [1] * len(resp))
    np.testing.assert_array_equal(ex["mm_token_type_ids"], np.asarray(prompt + resp) == pad)
    np.testing.assert_array_equal(ex["pixel_values"], ref["pixel_values"])
    np.testing.assert_array_equal(ex["image_grid_thw"], grid)
    assert ex["input_ids"].dtype == np.int32 and ex["image_grid_thw"].dtype == np.int32

    # No response: all-zero loss mask, prompt only.
    ex2 = P.encode_example(tok, ip, P.chat_prompt("What colour?"), [img])
    np.testing.assert_array_equal(ex2["input_ids"], prompt)
    assert ex2["loss_mask"].sum() == 0


def test_two_images_expand_in_order(tok, ip, tmp_path):
    a, b = rand_image(30, 30, 1), rand_image(120, 60, 2)
    path = tmp_path / "b.png"
    Image.fromarray(b).save(path)
    ex = P.encode_example(tok, ip, P.chat_prompt("<image> or <image>?", num_images=2), [a, str(path)])
    ref = ip(images=[Image.fromarray(a), Image.fromarray(b)])
    counts = np.prod(np.asarray(ref["image_grid_thw"]), -1) // 4
    assert counts[0] != counts[1]
    ids = ex["input_ids"]
    starts = np.flatnonzero(ids == special(tok, "<|vision_start|>"))
    ends = np.flatnonzero(ids == special(tok, "<|vision_end|>"))
    assert list(ends - starts - 1) == list(counts)
    pad = special(tok, "<|image_pad|>")
    for s, e in zip(starts, ends):
        assert (ids[s + 1 : e] == pad).all()
    assert (ids == pad).sum() == counts.sum()
    np.testing.assert_array_equal(ex["pixel_values"], ref["pixel_values"])  # path == array (PNG lossless)


def test_image_processor_overrides_and_saved_config(tmp_path):
    tiny = P.load_image_processor(
        None, min_pixels=8 * 8, max_pixels=8 * 8 * 9, patch_size=4, merge_size=2, temporal_patch_size=2
    )
    out = tiny(images=[Image.fromarray(rand_image(17, 33))])
    # 17x33 -> multiples of 8 -> 16x32 -> 4x8 patches of 4x4, each 3*2*4*4 = 96 values
    np.testing.assert_array_equal(out["image_grid_thw"], [[1, 4, 8]])
    assert out["pixel_values"].shape == (32, 96)
    tiny.save_pretrained(tmp_path)
    again = P.load_image_processor(str(tmp_path), max_pixels=8 * 8 * 4)
    assert (again.patch_size, again.merge_size) == (4, 2)
    assert np.prod(again(images=[Image.fromarray(rand_image(17, 33))])["image_grid_thw"]) <= 4 * 4
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        P.load_image_processor(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------- errors


def test_clear_errors(tok, ip, tmp_path):
    prompt = P.chat_prompt("What?")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        P.encode_example(tok, ip, prompt, [str(tmp_path / "missing.png")])
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        P.encode_example(tok, ip, prompt, [str(bad)])
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> placeholders but 2 images"):
        P.encode_example(tok, ip, prompt, [rand_image(30, 30), rand_image(30, 30)])
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> placeholders but 0 images"):
        P.encode_example(tok, ip, prompt, [])
    with pytest.raises(FileNotFoundError):
        P.load_tokenizer(str(tmp_path / "no_tokenizer"))
    ex = P.encode_example(tok, ip, P.chat_prompt("x", num_images=0), [], response="y")
    with pytest.raises(ValueError, match=f"example 1 has {len(ex['input_ids'])} tokens > max_len=5"):
        P.collate(
            [
                {
                    **ex,
                    "input_ids": ex["input_ids"][:3],
                    "loss_mask": ex["loss_mask"][:3],
                    "mm_token_type_ids": ex["mm_token_type_ids"][:3],
                },
                ex,
            ],
            pad_id=0,
            max_len=5,
        )


# ----------------------------------------------------------------------------- collate


def fake_example(ids, loss, n_patches, d=6, seed=0):
    """A hand-made encoded example (image tokens marked by id 9)."""
    ids = np.asarray(ids, np.int32)
    rng = np.random.RandomState(seed)
    return {
        "input_ids": ids,
        "loss_mask": np.asarray(loss, np.int32),
        "mm_token_type_ids": (ids == 9).astype(np.int32),
        "pixel_values": rng.randn(n_patches, d).astype(np.float32),
        "image_grid_thw": np.asarray([[1, 2, n_patches // 2]] if n_patches else np.zeros((0, 3)), np.int32),
    }


def test_collate_left_and_right():
    e0 = fake_example([5, 9, 9, 7, 8], [0, 0, 0, 1, 1], 8, seed=0)
    e1 = fake_example([5, 6], [0, 0], 0, seed=1)  # no image, empty loss row
    e2 = fake_example([5, 9, 6, 7], [0, 0, 0, 1], 4, seed=2)
    P0 = -1
    left = P.collate([e0, e1, e2], pad_id=P0, side="left")
    np.testing.assert_array_equal(left["input_ids"], [[5, 9, 9, 7, 8], [P0, P0, P0, 5, 6], [P0, 5, 9, 6, 7]])
    np.testing.assert_array_equal(left["attention_mask"], [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(left["loss_mask"], [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(left["mm_token_type_ids"], [[0, 1, 1, 0, 0], [0] * 5, [0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(left["pixel_values"], np.concatenate([e0["pixel_values"], e2["pixel_values"]]))
    np.testing.assert_array_equal(left["image_grid_thw"], [[1, 2, 4], [1, 2, 2]])
    for k in ("input_ids", "attention_mask", "loss_mask", "mm_token_type_ids", "image_grid_thw"):
        assert left[k].dtype == np.int32, k

    right = P.collate([e0, e1, e2], pad_id=P0, side="right", max_len=7)
    np.testing.assert_array_equal(
        right["input_ids"], [[5, 9, 9, 7, 8, P0, P0], [5, 6] + [P0] * 5, [5, 9, 6, 7, P0, P0, P0]]
    )
    np.testing.assert_array_equal(right["attention_mask"], [[1] * 5 + [0] * 2, [1] * 2 + [0] * 5, [1] * 4 + [0] * 3])
    np.testing.assert_array_equal(right["loss_mask"], [[0, 0, 0, 1, 1, 0, 0], [0] * 7, [0, 0, 0, 1, 0, 0, 0]])

    bucket = P.collate([e1, e2], pad_id=P0, side="right", pad_to_multiple=3)
    np.testing.assert_array_equal(bucket["input_ids"], [[5, 6, P0, P0, P0, P0], [5, 9, 6, 7, P0, P0]])

    none = P.collate([e1, e1], pad_id=0)
    assert none["pixel_values"].shape == (0, 6) and none["image_grid_thw"].shape == (0, 3)
    with pytest.raises(ValueError, match="side must be"):
        P.collate([e0], pad_id=0, side="middle")


def test_collate_real_examples_keep_image_order(tok, ip):
    imgs = [rand_image(30, 30, 3), rand_image(60, 90, 4)]
    exs = [
        P.encode_example(tok, ip, P.chat_prompt("What?"), [imgs[0]], response="red"),
        P.encode_example(tok, ip, P.chat_prompt("Which one is bigger?"), [imgs[1]]),
    ]
    batch = P.collate(exs, pad_id=tok.pad_token_id, side="left")
    ref = ip(images=[Image.fromarray(i) for i in imgs])
    np.testing.assert_array_equal(batch["pixel_values"], ref["pixel_values"])
    np.testing.assert_array_equal(batch["image_grid_thw"], ref["image_grid_thw"])
    # image tokens in the batch == merged patches of the batch's images
    assert batch["mm_token_type_ids"].sum() == np.prod(ref["image_grid_thw"], -1).sum() // 4
    assert (batch["input_ids"][:, -1] == tok.convert_tokens_to_ids("<|im_end|>")).sum() == 1
    assert batch["loss_mask"][1].sum() == 0 and batch["loss_mask"][0].sum() == len(tok.encode("red")) + 1
