"""The n sweep: stage 2 on the Qwen2-VL-2B policy with n answers per prompt (argument n=3..7;
the paper reports a near-linear gain with n). One run per n:

    for n in 3 4 5 6 7; do python -m grlhfv_jax.main --config configs/paper/nsweep_qwen2vl_2b.py:8chip,n=$n ...; done

(method.md does not say which policy the sweep used.)

    python -m grlhfv_jax.main --config configs/paper/nsweep_qwen2vl_2b.py:8chip,n=3 \
        --config.model.policy.path=/ckpt/Qwen2-VL-2B \
        --config.data.files.policy_train.path=/data/align-anything/text-image-to-text/train \
        --config.policy_rl.grm_path=runs/grm_qwen25vl_7b/grm_rl/grm
    python -m grlhfv_jax.main --config configs/paper/nsweep_qwen2vl_2b.py:8chip,n=3 --dry_run   # memory per device

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
    return common.policy_config(arg, "qwen2vl_2b", n=5)
