"""Stage 2 (GRLHF-V) on the LLaVA-1.5-7B policy, n = 5, judged by the stage-1 LLaVA-1.5-7B GRM
(grm_llava15_7b: one tokenizer per run, so the judge is of the policy's family).

    python -m grlhfv_jax.main --config configs/paper/policy_llava15_7b.py:8chip \
        --config.model.policy.path=/ckpt/llava-1.5-7b-hf \
        --config.data.files.policy_train.path=/data/align-anything/text-image-to-text/train \
        --config.policy_rl.grm_path=runs/grm_llava15_7b/grm_rl/grm
    python -m grlhfv_jax.main --config configs/paper/policy_llava15_7b.py:8chip --dry_run   # memory per device

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
    c = common.policy_config(arg, "llava15_7b", judge="llava15_7b")
    c.policy_rl.grm_path = "<the stage-1 GRM folder: grm_rl/grm in the workdir of the grm_llava15_7b run>"
    return c
