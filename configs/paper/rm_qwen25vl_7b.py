"""Baseline reward model: the score-only Bradley-Terry RM from Qwen2.5-VL-7B-Instruct (scalar head
on the last token, 0.001 score regulariser), evaluated like the GRM.

    python -m grlhfv_jax.main --config configs/paper/rm_qwen25vl_7b.py:8chip \
        --config.model.rm.path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.files.grm_train.path=/data/align-anything/text-image-to-text/train \
        --config.data.files.grm_test_id.path=/data/align-anything/text-image-to-text/test \
        --config.data.files.grm_test_ood.path=/data/beavertails-v/evaluation
    python -m grlhfv_jax.main --config configs/paper/rm_qwen25vl_7b.py:8chip --dry_run   # memory per device

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
    return common.rm_config(arg, "qwen25vl_7b")
