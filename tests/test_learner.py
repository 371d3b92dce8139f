"""The RL learner's step (`trainers.learner.grpo_step_fn`) against references computed here:
the advantages the update receives are those of the reward function's groups (numpy GRPO by
hand), and its reference log-probs are the frozen reference model's, teacher-forced with a plain
forward pass (not the learner's `compute_logprobs`). A learner that took the advantages from the
wrong groups, or skipped the reference pass (policy or sampler log-probs in its place), fails."""

import types

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from grlhfv_jax import models
from grlhfv_jax.rollout import EngineRollout
from grlhfv_jax.trainers import learner, steps
from tiny_models import EOS, IMAGE, PAD, PATCH_DIM, VISION_END, VISION_START, tiny_hf_config

P, G = 4, 3  # prompt rows, samples per prompt
GRID = (1, 4, 4)  # one image per prompt: 16 patches -> 4 image tokens


def _example(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    text = rng.integers(3, 90, 3 + seed % 3).tolist()
    ids = [VISION_START] + [IMAGE] * 4 + [VISION_END] + text
    return {
        "input_ids": ids,
        "mm_token_type_ids": [0] + [1] * 4 + [0] * (len(ids) - 5),
        "pixel_values": rng.standard_normal((16, PATCH_DIM)).astype(np.float32),
        "image_grid_thw": np.array([GRID]),
    }


def _section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            group_size=G,
            max_new_tokens=5,
            temperature=1.0,
            max_len=16,
            rollout_num_micro_batches=1,
            mini_batches=1,
            clip_eps=0.2,
            clip_eps_high=None,
            clip_ratio_c=None,
            entropy_coef=0.0,
            kl_coef=0.5,
            num_micro_batches=1,
            ref_num_micro_batches=1,
            advantage_estimator="grpo",
            kl_estimator="k3",
            loss_agg_mode="token-mean",
            policy_loss="grpo",
        )
    )


def _grpo_by_hand(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """GRPO advantages of rows pooled by `groups`: (r - mean) / (std(ddof=1) + 1e-6) per group."""
    out = np.zeros_like(values)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        r = values[rows].ravel()
        out[rows] = ((r - r.mean()) / (r.std(ddof=1) + 1e-6)).reshape(len(rows), -1)
    return out


def _ref_logprobs_by_hand(ref, examples, gen) -> list[np.ndarray]:
    """Per sampled row: the reference model's log-probs of its response tokens, from one forward
    pass over the rows laid out here: prompt + response from column 0, right-padded (causal
    attention: the padding after a row changes none of its logits)."""
    rows = [
        examples[r // G]["input_ids"] + np.asarray(gen.tokens[r][: int(gen.lengths[r])]).tolist() for r in range(P * G)
    ]
    T = max(len(x) for x in rows)
    ids = np.full((P * G, T), PAD, np.int32)
    mask = np.zeros((P * G, T), np.int32)
    for r, x in enumerate(rows):
        ids[r, : len(x)], mask[r, : len(x)] = x, 1
    pixels = np.concatenate([examples[r // G]["pixel_values"] for r in range(P * G)])
    grids = np.concatenate([examples[r // G]["image_grid_thw"] for r in range(P * G)])
    logp = np.asarray(jax.nn.log_softmax(np.asarray(ref(ids, mask, pixels, grids), np.float64), axis=-1))
    out = []
    for r, x in enumerate(rows):
        start = len(examples[r // G]["input_ids"])
        out.append(np.array([logp[r, t - 1, x[t]] for t in range(start, len(x))]))
    return out


def test_the_step_updates_with_the_reward_groups_advantages_and_the_reference_logprobs(monkeypatch):
    hf = tiny_hf_config(
        "qwen2_vl", text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    ).to_dict()
    policy, ref = models.from_config(hf, rngs=nnx.Rngs(0)), models.from_config(hf, rngs=nnx.Rngs(1))
    examples = [_example(s) for s in range(P)]
    codec = types.SimpleNamespace(
        pad_id=PAD,
        eos_id=EOS,
        banned_ids=lambda: [IMAGE, VISION_START, VISION_END],
        decode=lambda tokens, lengths: [f"row {i}" for i in range(len(lengths))],
    )
    values = np.random.default_rng(3).random((P, G))
    groups = np.array([0, 1, 0, 1])  # rows 0 and 2 pooled, 1 and 3 pooled (as grm_rl's two orders)
    seen = {}

    class Recording(EngineRollout):
        def generate(self, batch, params):
            seen["gen"] = super().generate(batch, params)
            return seen["gen"]

    real_step = steps.grpo_step

    def recording_step(state, batch, cfg, **kw):
        seen["batch"] = {
            k: np.asarray(v) for k, v in batch.items() if k in ("advantages", "ref_logp", "response_mask", "old_logp")
        }
        return real_step(state, batch, cfg, **kw)

    monkeypatch.setattr(steps, "grpo_step", recording_step)
    rewards_seen = []

    def reward_fn(rollout, step):
        rewards_seen.append((len(rollout.items), rollout.group, rollout.complete.shape, list(rollout.texts)))
        return learner.Rewards(values, groups, {"custom/metric": 1.5})

    step_fn = learner.grpo_step_fn(
        ref=ref,
        codec=codec,
        prompts_for_step=lambda step: (list(range(P)), examples),
        reward_fn=reward_fn,
        sec=_section(),
        seed_for_step=lambda step: 11 + step,
        rollout_for=lambda model: Recording(model, eos_token_id=EOS, pad_token_id=PAD),
    )
    _, metrics = step_fn(steps.TrainState(policy, optax.sgd(0.0)), 0)

    assert rewards_seen == [(P, G, (P, G), [f"row {i}" for i in range(P * G)])]
    assert metrics["custom/metric"] == 1.5 and "time/step_s" in metrics
    batch, gen = seen["batch"], seen["gen"]
    # advantages: per row, those of its reward group (not one group per prompt)
    adv = batch["advantages"].reshape(P, G)
    np.testing.assert_allclose(adv, _grpo_by_hand(values, groups), rtol=1e-5, atol=1e-6)
    assert not np.allclose(adv, _grpo_by_hand(values, np.arange(P)), atol=1e-3)
    # reference log-probs: the reference model's, on the response columns
    mask, Tp = batch["response_mask"], batch["ref_logp"].shape[1] - np.asarray(gen.tokens).shape[1]
    by_hand = _ref_logprobs_by_hand(ref, examples, gen)
    for r in range(P * G):
        n = int(gen.lengths[r])
        assert mask[r, Tp : Tp + n].all() and not mask[r, Tp + n :].any()
        np.testing.assert_allclose(batch["ref_logp"][r, Tp : Tp + n], by_hand[r], rtol=1e-4, atol=1e-4)
        # ... which differ from the sampler's (the policy's) log-probs: a skipped pass would show
        assert np.abs(batch["old_logp"][r, Tp : Tp + n] - by_hand[r]).max() > 1e-2 or n == 0
