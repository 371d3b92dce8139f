"""Stage 2 (GRLHF-V): the Qwen2.5-VL-3B-Instruct policy, n = 5 answers per prompt, the stage-1 GRM
(Qwen2.5-VL-7B) judging both orders of every pair, reward = mean score.

    python -m grlhfv_jax.main --config configs/paper/policy_qwen25vl_3b.py:8chip \
        --config.model.policy.path=/ckpt/Qwen2.5-VL-3B-Instruct \
        --config.data.files.policy_train.path=/data/align-anything/text-image-to-text/train \
        --config.policy_rl.grm_path=runs/grm_qwen25vl_7b/grm_rl/grm
    python -m grlhfv_jax.main --config configs/paper/policy_qwen25vl_3b.py:8chip --dry_run   # memory per device

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
    return common.policy_config(arg, "qwen25vl_3b")
