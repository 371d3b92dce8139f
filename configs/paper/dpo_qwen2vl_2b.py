"""Baseline: DPO on the Qwen2-VL-2B policy with the Align-Anything preference pairs (beta 0.1,
lr 1e-6).

    python -m grlhfv_jax.main --config configs/paper/dpo_qwen2vl_2b.py:8chip \
        --config.model.policy.path=/ckpt/Qwen2-VL-2B \
        --config.data.files.grm_train.path=/data/align-anything/text-image-to-text/train
    python -m grlhfv_jax.main --config configs/paper/dpo_qwen2vl_2b.py:8chip --dry_run   # memory per device

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
    return common.dpo_config(arg, "qwen2vl_2b")
