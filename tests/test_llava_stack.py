"""LLaVA-1.5 through the layers above models/ (the family contract, `models.contract`): the engine's
greedy rollout equals transformers' `generate`, its sampled log-probs equal the learner's teacher-forced
ones on the GRPO training rows, and `grpo_update` runs (the same update in 1 or 2 micro-batches).
Tiny config "gqa" of tests/test_models_llava.py, fp32."""

import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
import test_models_llava as L  # noqa: E402  (its tiny configs and batches; its tests are not collected here)
from grlhfv_jax import models  # noqa: E402
from grlhfv_jax.models import contract  # noqa: E402
from grlhfv_jax.rollout import EngineRollout, SamplingParams  # noqa: E402
from grlhfv_jax.rollout.group_sampling import cut_at_tokens  # noqa: E402
from grlhfv_jax.trainers import grpo as learner  # noqa: E402
from grlhfv_jax.trainers import loop, steps  # noqa: E402

G, NEW = 2, 6


@pytest.fixture(scope="module")
def llava_pair(tmp_path_factory):
    """(transformers' model, ours loaded from its save_pretrained folder, the folder)."""
    tm = L.build_torch("gqa")
    path = str(tmp_path_factory.mktemp("llava_gqa"))
    tm.save_pretrained(path)
    return tm, models.load_pretrained(path), path


def _prompts(cfg, seed):
    """GEN_ROWS (one image; two images) left-padded, with the family's image_grid_thw rows."""
    b = L.make_batch(cfg, L.GEN_ROWS, pad_side="left", seed=seed)
    return dict(b, image_grid_thw=np.ones((len(b["pixel_values"]), 3), np.int32))


def test_llava_declares_the_contract(llava_pair):
    _, ours, _ = llava_pair
    assert isinstance(ours, contract.VLModel) and not ours.shared_prompt and not ours.group_images
    grid = np.ones((2, 3), np.int32)
    np.testing.assert_array_equal(ours.image_layout.rows_per_image(grid), [1, 1])
    np.testing.assert_array_equal(ours.image_layout.tokens_per_image(grid), [ours.config.image_tokens] * 2)
    assert ours.text_position_ids(np.zeros((2, 3))).shape == (2, 3) and ours.patch_unit() == 0


def test_engine_greedy_equals_transformers_generate(llava_pair):
    import torch
    import transformers

    tm, ours, _ = llava_pair
    batch = _prompts(ours.config, seed=2)
    gen_cfg = transformers.GenerationConfig(
        do_sample=False,
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        eos_token_id=None,
        pad_token_id=L.PAD,
        bos_token_id=L.BOS,
    )
    with torch.no_grad():
        ref = tm.generate(
            input_ids=torch.as_tensor(batch["input_ids"]).long(),
            attention_mask=torch.as_tensor(batch["attention_mask"]).long(),
            pixel_values=torch.as_tensor(batch["pixel_values"]),
            generation_config=gen_cfg,
        )
    ref = ref[:, batch["input_ids"].shape[1] :].numpy()
    out = EngineRollout(ours, eos_token_id=None, pad_token_id=L.PAD).generate(
        batch, SamplingParams(max_new_tokens=NEW, temperature=0.0)
    )
    assert ref.shape == (2, NEW) and len(np.unique(ref)) > 1
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)


@pytest.fixture(scope="module")
def sampled(llava_pair):
    _, ours, _ = llava_pair
    prompts = _prompts(ours.config, seed=3)
    out = EngineRollout(ours, eos_token_id=None, pad_token_id=L.PAD).generate(
        prompts, SamplingParams(max_new_tokens=NEW, temperature=1.0, num_samples=G, seed=5)
    )
    return prompts, cut_at_tokens(out, [L.IMAGE])  # a sampled <image> ends the response (as the stages do)


def test_sampled_logprobs_equal_the_learners_teacher_forcing(llava_pair, sampled):
    """The engine's sampled log-probs (KV cache, 1-D positions continued by slot deltas) equal
    `steps.compute_logprobs` on the GRPO training rows (`sampled_batch`: prompts repeated with their
    images, `place_batch`, 2 micro-batches each reading its rows' image embeddings)."""
    _, ours, _ = llava_pair
    prompts, gen = sampled
    batch, _, window = learner.sampled_batch(ours, prompts, gen, pad_id=L.PAD)
    assert batch["pixel_values"].shape[0] == G * 3
    jb = loop.place_batch(ours, loop.micro_batch_images(ours, batch, 2, G))
    tf = np.asarray(steps.compute_logprobs(ours, jb, window=window, group=G, num_micro_batches=2))
    mask = batch["response_mask"] > 0
    assert mask.sum() >= 2 * G and np.all(batch["old_logp"][mask] < 0)
    np.testing.assert_allclose(tf[mask], batch["old_logp"][mask], atol=2e-5)


def test_grpo_update_runs_on_llava(llava_pair, sampled):
    """`grpo_update` on a LLaVA batch: finite, it moves the weights, 2 micro-batches = 1."""
    _, ours, path = llava_pair
    prompts, gen = sampled
    rewards = np.random.default_rng(1).random((2, G))
    results = []
    for m in (1, 2):
        state = steps.TrainState(models.load_pretrained(path), optax.sgd(0.5))
        cfg = steps.GRPOConfig(kl_coef=0.1, num_micro_batches=m, ref_num_micro_batches=m)
        out = learner.grpo_update(state, ours, prompts, gen, rewards, pad_id=L.PAD, cfg=cfg)
        results.append((out, nnx.state(state.model, nnx.Param)))
    (one, p1), (two, p2) = results
    assert np.isfinite(one["loss"]) and abs(one["loss"] - two["loss"]) < 1e-5
    moved = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), p1, nnx.state(ours, nnx.Param)
    )
    assert max(jax.tree.leaves(moved)) > 1e-4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), p1, p2)


def test_codec_encodes_llava_examples_as_llava_processor(llava_pair):
    """`encoding.Codec` with LLaVA's prompt format: the prompt ids and pixels of transformers'
    LlavaProcessor (llava-hf's chat template), the response + `</s>` under the loss mask, the family's
    special ids; its left-padded batch samples through the engine."""
    import transformers
    from PIL import Image

    from grlhfv_jax import encoding
    from grlhfv_jax.models.llava import CHAT_TEMPLATE, LlavaPrompts

    _, ours, _ = llava_pair
    cfg, tok = ours.config, L.tiny_tokenizer()
    prompts = LlavaPrompts(cfg)
    assert isinstance(prompts, contract.PromptFormat)
    codec = encoding.Codec(
        tok, prompts.image_processor(), L.PAD, tok.convert_tokens_to_ids(prompts.eos_token), prompts=prompts
    )
    assert codec.eos_id == L.EOS and codec.banned_ids() == [L.IMAGE]
    assert codec.special_ids() == {"image_token_index": L.IMAGE, "eos_token_id": L.EOS, "pad_token_id": L.PAD}
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 30), (20, 50))]
    ex = [codec.example("what is in the image?", images[0], "a red square"), codec.example("what is it?", images[1])]
    proc = transformers.LlavaProcessor(
        image_processor=prompts.image_processor(),
        tokenizer=tok,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the image?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ref = proc(text=text, images=images[:1], return_tensors="np")
    n = ref["input_ids"].shape[1]
    np.testing.assert_array_equal(ex[0]["input_ids"][:n], ref["input_ids"][0])
    np.testing.assert_array_equal(
        ex[0]["input_ids"][n:], tok.encode(" a red square", add_special_tokens=False) + [L.EOS]
    )
    np.testing.assert_array_equal(ex[0]["loss_mask"], (np.arange(len(ex[0]["input_ids"])) >= n).astype(np.int32))
    np.testing.assert_array_equal(ex[0]["pixel_values"], ref["pixel_values"])
    b = encoding.batch(ex, codec, side="left", max_len=len(ex[0]["input_ids"]))
    assert b["pixel_values"].shape == (2,) + cfg.pixel_shape and b["image_grid_thw"].shape == (2, 3)
    out = EngineRollout(ours, eos_token_id=codec.eos_id, pad_token_id=codec.pad_id).generate(
        b, SamplingParams(max_new_tokens=3, temperature=0.0)
    )
    assert np.asarray(out.tokens).shape == (2, 3)


def test_judge_shared_prefix_equals_separate_prompts(llava_pair):
    """`judge_generate` on LLaVA (the prefix with its image prefilled once, each pair's suffix at the
    1-D positions `text_position_ids` continues) = greedy `generate` on every full prompt."""
    from grlhfv_jax.rollout import engine, judge

    _, ours, _ = llava_pair
    pb = _prompts(ours.config, seed=4)
    rng = np.random.default_rng(0)
    suffixes = [
        [rng.integers(3, L.IMAGE - 1, k).tolist() for k in (4, 7, 2)],
        [rng.integers(3, L.IMAGE - 1, k).tolist() for k in (5, 1)],
    ]
    out = judge.judge_generate(ours, pb, suffixes, max_new_tokens=NEW, pad_token_id=L.PAD)
    seqs = [list(pb["input_ids"][p][pb["attention_mask"][p] > 0]) + s for p in range(2) for s in suffixes[p]]
    T = max(map(len, seqs))
    ids = np.array([[L.PAD] * (T - len(s)) + s for s in seqs], np.int32)
    n_img = [1, 2]  # GEN_ROWS: images per prompt
    first = [0, 1]
    pv = np.concatenate([pb["pixel_values"][first[p] : first[p] + n_img[p]] for p in range(2) for _ in suffixes[p]])
    full = dict(
        input_ids=ids,
        attention_mask=(np.arange(T)[None] >= (T - np.array([len(s) for s in seqs]))[:, None]).astype(np.int32),
        pixel_values=pv,
        image_grid_thw=np.ones((len(pv), 3), np.int32),
    )
    ref = engine.generate(ours, full, max_new_tokens=NEW, temperature=0.0, pad_token_id=L.PAD)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(ref.logprobs), atol=1e-4)


def test_value_head_reads_the_scalar_head_at_every_token(llava_pair):
    """`score_hidden` (PPO's value head) at each row's last real token is `score` (the RM's reward)."""
    _, _, path = llava_pair
    rm = models.load_pretrained(path, scalar_head=True)
    b = L.make_batch(rm.config, L.ROWS, pad_side="right", seed=5)
    h = rm(b["input_ids"], b["attention_mask"], b["pixel_values"], return_hidden=True)
    values = np.asarray(rm.score_hidden(h))
    last = b["attention_mask"].sum(1) - 1
    np.testing.assert_allclose(
        values[np.arange(3), last],
        np.asarray(rm.score(b["input_ids"], b["attention_mask"], b["pixel_values"])),
        atol=1e-5,
    )
    assert values.shape == b["input_ids"].shape and np.std(values) > 0
