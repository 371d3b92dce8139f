"""Stage 1: the GRM from Qwen2.5-VL-3B-Instruct, GRPO on the paper's pair reward (Align-Anything;
OOD check on BeaverTails-V).

    python -m grlhfv_jax.main --config configs/paper/grm_qwen25vl_3b.py:8chip \
        --config.model.grm.path=/ckpt/Qwen2.5-VL-3B-Instruct \
        --config.data.files.grm_train.path=/data/align-anything/text-image-to-text/train \
        --config.data.files.grm_test_id.path=/data/align-anything/text-image-to-text/test \
        --config.data.files.grm_test_ood.path=/data/beavertails-v/evaluation
    python -m grlhfv_jax.main --config configs/paper/grm_qwen25vl_3b.py:8chip --dry_run   # memory per device

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
    return common.grm_config(arg, "qwen25vl_3b")
