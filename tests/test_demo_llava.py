"""The short demo with tiny LLaVA-1.5 models in every role (`configs/demo.py:smoke,llava`): every stage
runs through the family contract (the engine, the shared-prefix judge, the GRPO / PPO / DPO / BT
learners, the codec with LLaVA's `<image>` and `</s>`), and writes its outputs. The config differs from
the Qwen demo's only in the models."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402

from grlhfv_jax import main, models  # noqa: E402


def test_the_llava_switch_changes_only_the_models():
    qwen, llava = demo.get_config("smoke").to_dict(), demo.get_config("smoke,llava").to_dict()
    assert {k for k in qwen if qwen[k] != llava[k]} == {"model"}
    assert {llava["model"][r]["hf_config"]["model_type"] for r in ("policy", "grm", "rm")} == {"llava"}
    with pytest.raises(ValueError, match="unknown argument"):
        demo.get_config("smoke,llama")


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo_llava"))
    config = demo.get_config("smoke,llava")
    return config, workdir, main.run(config, workdir)


def test_the_short_demo_runs_with_llava(llava_run):
    config, workdir, summary = llava_run
    for key in (
        "grm/accuracy_id",
        "grm/position_consistency_id",
        "baseline_rm/accuracy_id",
        "policy/oracle_score_before",
        "policy/oracle_score_after",
        "baseline_rm/oracle_score_after",
        "dpo/oracle_score_after",
        "dpo/train_loss",
        "policy/oracle_score_sampled_after",
    ):
        assert key in summary and np.isfinite(summary[key]), key
    for name in config.stages:
        assert summary[f"time/{name}_s"] > 0, name
    logged = {json.loads(line)["stage"] for line in open(os.path.join(workdir, "metrics.jsonl"))}
    assert {"sft_policy", "sft_grm", "grm_rl", "rm", "policy_rl", "policy_rl_rm", "dpo"} <= logged
    for d in ("sft/policy", "grm_rl/grm", "rm/rm", "policy_rl/policy", "dpo/policy"):
        model = models.load_pretrained(os.path.join(workdir, d), scalar_head=d == "rm/rm")
        assert isinstance(model, models.Llava), d
