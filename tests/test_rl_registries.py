"""Issue 13: the RL registries are chosen by config keys (advantage_estimator, kl_estimator,
loss_agg_mode, policy_loss in the GRPO block; aggregator in policy_rl). Changing a key changes the
computation, checked against numpy and hand-computed numbers; an unknown name fails validation
naming the key and the registered names; the defaults are what the code did before the keys."""

import importlib.util
import math
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from grlhfv_jax import config as config_schema
from grlhfv_jax import models
from grlhfv_jax.config import ConfigError, sections
from grlhfv_jax.rl import grouped, grpo
from grlhfv_jax.trainers import grpo as learner
from grlhfv_jax.trainers import learner as rl_learner
from grlhfv_jax.trainers import steps

ROOT = os.path.join(os.path.dirname(__file__), "..")
GRPO_KEYS = ("advantage_estimator", "kl_estimator", "loss_agg_mode", "policy_loss")


def _demo():
    spec = importlib.util.spec_from_file_location("cfg_demo_registries", os.path.join(ROOT, "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("smoke")


def _validated(section: str = "grm_rl", **keys):
    """The demo smoke config with `keys` set in `section`, validated (defaults filled)."""
    config = _demo()
    for k, v in keys.items():
        config[section][k] = v
    return config_schema.validate(config)


def _cfg(**keys) -> steps.GRPOConfig:
    return rl_learner.grpo_config(_validated("grm_rl", **keys).grm_rl)


# ------------------------------------------------------------------------------------- defaults


def test_defaults_are_the_previous_behaviour():
    cfg = _cfg()  # the demo sets none of the keys: the schema's defaults, carried into the step's settings
    for key in GRPO_KEYS:
        assert getattr(cfg, key) == sections.GRPO[key].default, key
    assert grpo.ADVANTAGE_ESTIMATORS[cfg.advantage_estimator] is grpo.group_advantages
    assert grpo.KL_ESTIMATORS[cfg.kl_estimator] is grpo.kl_k3
    assert grpo.LOSS_AGGREGATIONS[cfg.loss_agg_mode] is grpo.agg_token_mean
    assert grpo.POLICY_LOSSES[cfg.policy_loss] is grpo.policy_loss


# ----------------------------------------------------------------------------------- advantages


def test_advantage_estimator_key_changes_the_advantages():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    row_valid = np.array([1, 1, 1, 1, 0, 0, 0, 0])  # the second prompt is a fill row
    got = {
        name: learner.response_advantages(rewards, row_valid, _cfg(advantage_estimator=name).advantage_estimator)
        for name in ("grpo", "rloo", "grpo_no_std")
    }
    # grpo: (r - 0.5) / (std_ddof1 + 1e-6), std = sqrt(1/3)
    z = 0.5 / (math.sqrt(1.0 / 3.0) + 1e-6)
    np.testing.assert_allclose(got["grpo"], [z, -z, -z, z, 0, 0, 0, 0], rtol=1e-6)
    # rloo: r_i - mean of the other three: 1 - 1/3, 0 - 2/3
    np.testing.assert_allclose(got["rloo"], [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(got["grpo_no_std"], [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0], rtol=1e-6)
    # the valid group only ever gets the same shape of values; a different group tells them apart
    r = np.array([[3.0, 1.0, 0.0]])
    ref_rloo = r - (r.sum(1, keepdims=True) - r) / 2
    ref_grpo = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(learner.response_advantages(r, np.ones(3), "rloo"), ref_rloo.ravel(), rtol=1e-6)
    np.testing.assert_allclose(learner.response_advantages(r, np.ones(3), "grpo"), ref_grpo.ravel(), rtol=1e-6)


# ------------------------------------------------------------------------- loss: KL, aggregation

# A tiny fixed batch: 2 rows, 4 tokens; column 0 is the prompt.
LOGP = np.array([[0.0, -1.0, -2.0, -0.5], [0.0, -0.3, -1.2, -0.7]], np.float32)
OLD = np.array([[0.0, -1.1, -1.7, -0.5], [0.0, -0.1, -1.2, -0.9]], np.float32)
REF = np.array([[0.0, -1.5, -1.0, -0.4], [0.0, -0.3, -2.0, -0.2]], np.float32)
MASK = np.array([[0, 1, 1, 1], [0, 1, 0, 0]], np.float32)
ADV = np.array([1.0, -2.0], np.float32)


def _loss(cfg, **kw):
    args = dict(logp=LOGP, old_logp=OLD, ref_logp=REF, advantages=ADV, mask=MASK)
    args.update(kw)
    loss, met = steps.grpo_loss(
        cfg, *(jnp.asarray(args[k]) for k in ("logp", "old_logp", "ref_logp", "advantages", "mask"))
    )
    return float(loss), {k: float(v) for k, v in met.items()}


def test_kl_estimator_key_changes_the_kl():
    # no policy-gradient term (advantages 0, old = logp); kl_coef 1: the loss is the KL term alone
    zero = dict(advantages=np.zeros(2, np.float32), old_logp=LOGP)
    k1, _ = _loss(_cfg(kl_estimator="k1", kl_coef=1.0), **zero)
    k3, _ = _loss(_cfg(kl_estimator="k3", kl_coef=1.0), **zero)
    d = LOGP - REF  # masked tokens: 0.5, -1.0, -0.1 | 0.0
    assert k1 == pytest.approx((0.5 - 1.0 - 0.1 + 0.0) / 4, abs=1e-6)
    k3_tok = np.exp(-d) + d - 1.0  # exp(ref - logp) - (ref - logp) - 1
    assert k3 == pytest.approx(float((k3_tok * MASK).sum() / MASK.sum()), abs=1e-6)
    assert k3 == pytest.approx((math.exp(-0.5) + 0.5 - 1 + math.exp(1) - 2 + math.exp(0.1) - 0.1 - 1) / 4, abs=1e-6)
    assert k1 != pytest.approx(k3, abs=1e-2)


def _pg_tokens(clip=0.2):
    ratio = np.exp(LOGP - OLD)
    a = ADV[:, None]
    return np.maximum(-a * ratio, -a * np.clip(ratio, 1 - clip, 1 + clip))


@pytest.mark.parametrize("kl_coef", [0.0, 0.5])
def test_loss_agg_mode_key_changes_the_loss(kl_coef):
    tok = _pg_tokens() + kl_coef * (np.exp(REF - LOGP) - (REF - LOGP) - 1.0)
    want = {
        "token-mean": (tok * MASK).sum() / MASK.sum(),
        "seq-mean-token-sum": (tok * MASK).sum(1).mean(),
        "seq-mean-token-mean": ((tok * MASK).sum(1) / MASK.sum(1)).mean(),
    }
    got = {mode: _loss(_cfg(loss_agg_mode=mode, kl_coef=kl_coef))[0] for mode in want}
    for mode in want:
        assert got[mode] == pytest.approx(float(want[mode]), abs=1e-5), mode
    assert len({round(v, 4) for v in got.values()}) == 3  # three different numbers


# ------------------------------------------------------------------------------- policy loss


@pytest.fixture
def const_loss():
    """A policy loss registered under "test_const": loss 7 (no gradient), and metrics that show
    what the step passed it."""

    def fn(logp, old_logp, ref_logp, advantages, mask, *, clip_eps, kl_estimator, loss_agg_mode, denominator, **_):
        loss = 7.0 + 0.0 * jnp.sum(logp)
        den = jnp.float32(-1.0) if denominator is None else jnp.asarray(denominator, jnp.float32)
        return loss, {
            "loss": loss,
            "adv_mask_sum": jnp.sum(advantages[:, None] * mask),
            "denominator": den,
            "clip_eps": jnp.float32(clip_eps),
            "is_k1": jnp.float32(kl_estimator == "k1"),
            "is_seq_sum": jnp.float32(loss_agg_mode == "seq-mean-token-sum"),
        }

    grpo.register_policy_loss("test_const", fn)
    yield fn
    grpo.POLICY_LOSSES.pop("test_const", None)


def test_registered_policy_loss_is_the_one_the_step_uses(const_loss):
    cfg = _cfg(policy_loss="test_const", kl_estimator="k1", loss_agg_mode="seq-mean-token-sum", clip_eps=0.3)
    assert _loss(cfg)[0] == 7.0 and _loss(_cfg())[0] != pytest.approx(7.0)

    from tiny_models import tiny_hf_config  # tests/ is on sys.path

    hf = tiny_hf_config(
        "qwen2_vl", text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    ).to_dict()
    model = models.from_config(hf, rngs=nnx.Rngs(0))
    state = steps.TrainState(model, optax.sgd(0.1))
    ids = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], np.int32)
    batch = dict(
        input_ids=ids, attention_mask=np.ones_like(ids), response_mask=MASK, old_logp=OLD, ref_logp=REF, advantages=ADV
    )
    _, met = steps.grpo_step(state, {k: jnp.asarray(v) for k, v in batch.items()}, cfg)
    met = {k: float(v) for k, v in met.items()}
    assert met["loss"] == 7.0 and met["grad_norm"] == 0.0
    assert met["adv_mask_sum"] == pytest.approx(float((ADV[:, None] * MASK).sum()))  # 1 * 3 - 2 * 1
    assert met["denominator"] == 2.0  # rows, for a seq-mean mode
    assert met["clip_eps"] == pytest.approx(0.3) and met["is_k1"] == 1.0 and met["is_seq_sum"] == 1.0


# ----------------------------------------------------------------- grouped-comparison aggregator


def test_aggregator_key_changes_the_rewards():
    # 3 answers; (i, j): (score of i, score of j); (1, 2) did not parse
    judgments = {(0, 1): (8, 3), (1, 0): (6, 6), (0, 2): (2, 9), (2, 0): (7, 4), (1, 2): None, (2, 1): (5, 5)}
    complete = [True, True, True]
    got = {}
    for name in ("mean", "win_rate"):
        sec = _validated("policy_rl", aggregator=name).policy_rl
        got[name] = grouped.aggregate(3, judgments, complete, sec.aggregator)
    np.testing.assert_allclose(got["mean"], [(8 + 6 + 2 + 4) / 4, (3 + 6 + 5) / 3, (9 + 7 + 5) / 3])
    # wins: 0 beats 1, ties count 1/2, the unparsed judgment 1/2 each
    np.testing.assert_allclose(got["win_rate"], [1.5 / 4, 1.5 / 4, 3.0 / 4])


# ------------------------------------------------------------------------------ bad names


@pytest.mark.parametrize(
    "section,key,registry",
    [
        ("grm_rl", "advantage_estimator", grpo.ADVANTAGE_ESTIMATORS),
        ("grm_rl", "kl_estimator", grpo.KL_ESTIMATORS),
        ("grm_rl", "loss_agg_mode", grpo.LOSS_AGGREGATIONS),
        ("grm_rl", "policy_loss", grpo.POLICY_LOSSES),
        ("policy_rl", "kl_estimator", grpo.KL_ESTIMATORS),
        ("policy_rl_rm", "policy_loss", grpo.POLICY_LOSSES),
        ("policy_rl", "aggregator", grouped.AGGREGATORS),
    ],
)
def test_unknown_name_fails_validation_naming_the_key(section, key, registry):
    with pytest.raises(ConfigError) as e:
        _validated(section, **{key: "no_such_name"})
    msg = str(e.value)
    assert f"config.{section}.{key} = 'no_such_name'" in msg, msg
    assert all(repr(name) in msg for name in registry), msg


def test_a_registered_name_passes_validation(const_loss):
    assert _validated("grm_rl", policy_loss="test_const").grm_rl.policy_loss == "test_const"
    del grpo.POLICY_LOSSES["test_const"]
    with pytest.raises(ConfigError, match="policy_loss"):
        _validated("grm_rl", policy_loss="test_const")
