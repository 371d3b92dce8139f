"""The GRM+SFT baseline (method.md, "Baselines"): Qwen2.5-VL-3B-Instruct supervised on judgments
written from Align-Anything's own annotations: its five criteria (the dataset's principle), each
response's rates on them as the scores, its critiques as the analysis (data.grm_targets).

    python -m grlhfv_jax.main --config configs/paper/grm_sft_qwen25vl_3b.py:8chip \
        --config.model.grm.path=/ckpt/Qwen2.5-VL-3B-Instruct \
        --config.data.files.sft_grm.path=/data/align-anything/text-image-to-text/train
    python -m grlhfv_jax.main --config configs/paper/grm_sft_qwen25vl_3b.py:8chip --dry_run   # memory per device

Then the reward-model benchmarks measure its output, runs/grm_sft_qwen25vl_3b/sft/grm
(configs/eval/grm_baselines.py:sft_qwen25vl_3b; docs/evaluation.md, "The paper's GRM baselines").
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
    return common.grm_sft_config(arg, "qwen25vl_3b")
