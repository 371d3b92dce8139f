"""Stage 1 (GRM+RL) from LLaVA-1.5-7B (the paper's appendix: its GRM generalises out of
distribution, accuracy about 0.64-0.72 vs 0.51-0.55 for the score-only RM).

    python -m grlhfv_jax.main --config configs/paper/grm_llava15_7b.py:8chip \
        --config.model.grm.path=/ckpt/llava-1.5-7b-hf \
        --config.data.files.grm_train.path=/data/align-anything/text-image-to-text/train \
        --config.data.files.grm_test_id.path=/data/align-anything/text-image-to-text/test \
        --config.data.files.grm_test_ood.path=/data/beavertails-v/evaluation
    python -m grlhfv_jax.main --config configs/paper/grm_llava15_7b.py:8chip --dry_run   # memory per device

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
    c = common.grm_config(arg, "llava15_7b")
    # not in method.md: LLaVA-1.5's context is 4,096 positions (Vicuna-7B), so the GRM prompt is cut to
    # 2,048 tokens (image 576 + template ~330 + question + both responses) for the paper's 2,048 new tokens
    c.grm_rl.max_len = 2048
    return c
