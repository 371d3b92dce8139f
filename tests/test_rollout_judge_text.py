"""`judge_texts`: GRM prompts built from text (template + chat format + image), split at the
pairs' common token prefix, judged with the shared prefix cache == each full prompt generated alone."""

import numpy as np
from flax import nnx
from transformers import AutoTokenizer

import tiny_models as tm
from grlhfv_jax import processing
from grlhfv_jax.data.tokenizer import train_tokenizer
from grlhfv_jax.models import from_config
from grlhfv_jax.rl import grm_reward
from grlhfv_jax.rollout import engine, judge

CORPUS = [
    "The red circle is above the blue square. Scores \\boxed{7, 3}",
    "Response 1 is better than Response 2 because it is correct.",
    "What color is the shape? It is green and small.",
] * 30


def test_judge_texts_equals_full_prompts(tmp_path):
    out_dir, ids = train_tokenizer(CORPUS, str(tmp_path / "tok"), vocab_size=300)
    tok = AutoTokenizer.from_pretrained(out_dir)
    cfg = tm.tiny_hf_config("qwen2_vl", text={"vocab_size": ids["vocab_size"]}).to_dict()
    for k in ("image_token_id", "vision_start_token_id", "vision_end_token_id", "video_token_id"):
        cfg[k] = ids[k]
    model = from_config(cfg, rngs=nnx.Rngs(3))
    improc = processing.load_image_processor(min_pixels=56 * 56, max_pixels=56 * 84, patch_size=14, merge_size=2)
    rng = np.random.default_rng(0)
    items = [
        {
            "question": "What color is the shape?",
            "image": rng.integers(0, 255, (56, 84, 3), dtype=np.uint8),
            "pairs": [
                ("It is green.", "Red circle."),
                ("Red circle.", "It is green."),
                ("Green and small.", "It is green."),
            ],
        },
        {
            "question": "Which is better?",
            "image": rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
            "pairs": [("Response 1 is better.", "The blue square is above it, small and red.")],
        },
    ]
    out, texts = judge.judge_texts(model, tok, improc, items, max_new_tokens=6)
    # reference: every pair's full prompt on its own (same text construction, full tokenization)
    examples = []
    for item in items:
        for r1, r2 in item["pairs"]:
            user = grm_reward.build_grm_prompt(item["question"], r1, r2)
            examples.append(processing.encode_example(tok, improc, processing.chat_prompt(user), [item["image"]]))
    batch = processing.collate(examples, pad_id=tok.pad_token_id, side="left")
    ref = engine.generate(model, batch, max_new_tokens=6, temperature=0.0, pad_token_id=tok.pad_token_id)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    assert [len(t) for t in texts] == [3, 1] and all(len(s) == 1 for t in texts for s in t)
    assert texts[1][0][0] == tok.decode(np.asarray(ref.tokens)[3].tolist(), skip_special_tokens=True)
