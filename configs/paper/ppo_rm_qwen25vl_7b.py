"""Baseline: PPO with a critic on the Qwen2.5-VL-7B-Instruct policy with the score-only Bradley-Terry RM's
scores as reward (the RM of rm_qwen25vl_7b.py; the critic starts from it), the paper's PPO settings.

    python -m grlhfv_jax.main --config configs/paper/ppo_rm_qwen25vl_7b.py:8chip \
        --config.model.policy.path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.files.policy_train.path=/data/align-anything/text-image-to-text/train \
        --config.model.rm.path=runs/rm_qwen25vl_7b/rm/rm
    python -m grlhfv_jax.main --config configs/paper/ppo_rm_qwen25vl_7b.py:8chip --dry_run   # memory per device

Presets and shared settings: configs/paper/common.py; commands and data: docs/paper_runs.md.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "grlhfv_paper_common", os.path.join(os.path.dirname(__file__), "common.py")
)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg: str = ""):
    return common.ppo_rm_config(arg, "qwen25vl_7b")
