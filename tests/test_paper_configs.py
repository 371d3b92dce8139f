"""configs/paper/: one config per run of the paper, all valid under every mesh preset, with the
paper's hyperparameters (../shared/design/method.md) and the published model shapes."""

import glob
import importlib.util
import os

import pytest

from grlhfv_jax import config as config_schema
from grlhfv_jax.config import ConfigError
from grlhfv_jax.models import published

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "paper", "*.py")) if not p.endswith("common.py"))


def load(path):
    spec = importlib.util.spec_from_file_location(f"paper_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load(os.path.join(ROOT, "configs", "paper", "common.py"))


def test_one_config_per_paper_run():
    names = {os.path.basename(p)[:-3] for p in CONFIGS}
    policies = ("qwen2vl_2b", "qwen25vl_3b", "qwen2vl_7b", "qwen25vl_7b")
    want = {
        "grm_qwen25vl_3b",
        "grm_qwen25vl_7b",
        "rm_qwen25vl_7b",
        "nsweep_qwen2vl_2b",
        "grm_sft_qwen25vl_3b",
        "grm_sft_qwen25vl_7b",
    }
    want |= {f"{kind}_{p}" for kind in ("policy", "rm_grpo", "ppo_rm", "dpo") for p in policies}
    want |= {f"{kind}_llava15_7b" for kind in ("grm", "rm", "policy", "rm_grpo", "dpo")}  # the appendix
    assert names == want


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_every_paper_config_validates_under_every_preset(path):
    module = load(path)
    for preset, p in common.PRESETS.items():
        c = config_schema.validate(module.get_config(preset))
        assert tuple(c.mesh_shape) == p["mesh_shape"] and c.device_memory_gb == p["device_memory_gb"]
        assert c.data.kind == "files"
        for role in c.model:  # shapes from the published table
            assert c.model[role].dtype == "bfloat16" and c.model[role].param_dtype == "float32"
            assert c.model[role].hf_config in [published.hf_config(n) for n in published.NAMES]
        for sec in ("grm_rl", "policy_rl", "policy_rl_rm"):
            if sec in c.stages:
                s = c[sec]
                assert (s.lr, s.kl_coef, s.clip_eps, s.temperature, s.warmup_ratio, s.weight_decay) == (
                    1e-6,
                    0.02,
                    0.2,
                    1.0,
                    0.03,
                    0.01,
                )
                assert s.kl_estimator == "k3" and s.loss_agg_mode == "token-mean"
        if "grm_rl" in c.stages:
            assert (c.grm_rl.pairs_per_step, c.grm_rl.group_size, c.grm_rl.max_new_tokens) == (360, 8, 2048)
            assert not c.grm_rl.position_debias
        if "policy_rl" in c.stages:
            assert (c.policy_rl.n, c.policy_rl.max_new_tokens, c.policy_rl.aggregator, c.policy_rl.pairs) == (
                5,
                512,
                "mean",
                "both",
            )
        if "dpo" in c.stages:
            assert (c.dpo.beta, c.dpo.lr) == (0.1, 1e-6)
        if "rm" in c.stages:
            assert c.rm.reg == 0.001


def test_micro_batches_split_rows_evenly_over_each_preset():
    for preset, p in common.PRESETS.items():
        data, fsdp, _ = p["mesh_shape"]
        for group in (3, 4, 5, 6, 7, 8):
            k = common.micro_prompts(preset, group)
            assert 120 % k == 0 and (k * group) % (data * fsdp) == 0, (preset, group, k)
        for grm, calls in p.get("rollout_calls", {}).items():  # each call's prompts split over the devices
            assert 360 % calls == 0 and (360 // calls) % (data * fsdp) == 0, (preset, grm, calls)
            assert (
                load(os.path.join(ROOT, "configs", "paper", f"grm_{grm}.py"))
                .get_config(preset)
                .grm_rl.rollout_num_micro_batches
                == calls
            )
        for policy, calls in p.get("policy_rollout_calls", {}).items():
            assert 360 % calls == 0 and (360 // calls) % (data * fsdp) == 0, (preset, policy, calls)
            c = load(os.path.join(ROOT, "configs", "paper", f"rm_grpo_{policy}.py")).get_config(preset)
            assert c.policy_rl_rm.rollout_num_micro_batches == calls
        for (policy, n), k in p.get("judge_prompts_per_call", {}).items():  # each call's n(n-1) k pairs too
            assert 360 % k == 0 and (k * n * (n - 1)) % (data * fsdp) == 0, (preset, policy, n, k)
            name = "nsweep_qwen2vl_2b.py" if n != 5 else f"policy_{policy}.py"
            c = load(os.path.join(ROOT, "configs", "paper", name)).get_config(f"{preset},n={n}")
            assert c.policy_rl.judge_prompts_per_call == k
        for policy, rows in p.get("score_rows_per_call", {}).items():
            assert rows % (data * fsdp) == 0, (preset, policy, rows)


def test_nsweep_takes_n_from_the_argument_and_bad_arguments_are_named():
    module = load(os.path.join(ROOT, "configs", "paper", "nsweep_qwen2vl_2b.py"))
    assert [module.get_config(f"8chip,n={n}").policy_rl.n for n in (3, 7)] == [3, 7]
    assert module.get_config("").mesh_shape == common.PRESETS[common.DEFAULT_PRESET]["mesh_shape"]
    with pytest.raises(ValueError, match="'16chip'"):
        module.get_config("16chip")


def test_paths_are_placeholders_until_set():
    from grlhfv_jax import config as config_schema

    c = load(os.path.join(ROOT, "configs", "paper", "grm_qwen25vl_7b.py")).get_config("8chip")
    left = sorted(k for k, _ in config_schema.placeholders(c))
    assert left == [
        "data.files.grm_test_id.path",
        "data.files.grm_test_ood.path",
        "data.files.grm_train.path",
        "model.grm.path",
    ]
    c.model.grm.path = "/ckpt/Qwen2.5-VL-7B-Instruct"
    for s in ("grm_train", "grm_test_id", "grm_test_ood"):
        c.data.files[s].path = f"/data/{s}"
    assert config_schema.placeholders(c) == []
    c.data.files.grm_train.fields = "beavertails"
    with pytest.raises(ConfigError, match=r"config\.data\.files\.grm_train\.fields"):
        config_schema.validate(c)
