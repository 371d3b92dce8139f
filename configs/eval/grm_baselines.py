"""The paper's GRMs and their baselines on the reward-model benchmarks (method.md, "Baselines";
docs/evaluation.md, "The paper's GRM baselines"): the benchmarks and protocol of rm_benchmarks.py,
one run per GRM and training, the argument `<training>_<grm>`:

    untrained_qwen25vl_7b   the instruct checkpoint itself (the GRM without training)
    sft_qwen25vl_7b         GRM+SFT: sft/grm of configs/paper/grm_sft_qwen25vl_7b.py
    rl_qwen25vl_7b          the paper's GRM (GRM+RL): grm_rl/grm of configs/paper/grm_qwen25vl_7b.py
    (and the same three for qwen25vl_3b)

    python -m grlhfv_jax.evaluate --config configs/eval/grm_baselines.py:untrained_qwen25vl_7b \
        --workdir runs/eval_rm_untrained_qwen25vl_7b --config.root=/data/rm_benchmarks \
        --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct

Every run judges with the paper's template, both orders, k = 1 greedy and a majority of 5 sampled
judgments; its summary.json holds the same keys, so the three trainings compare row by row.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "grlhfv_eval_rm_benchmarks", os.path.join(os.path.dirname(__file__), "rm_benchmarks.py")
)
rm_benchmarks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rm_benchmarks)

GRMS = {"qwen25vl_3b": "Qwen2.5-VL-3B-Instruct", "qwen25vl_7b": "Qwen2.5-VL-7B-Instruct"}
# training -> the model folder to measure (a placeholder naming where it comes from)
TRAININGS = {
    "untrained": "<the {name} checkpoint folder (the GRM without training)>",
    "sft": "<runs/grm_sft_{grm}/sft/grm: the GRM+SFT baseline (configs/paper/grm_sft_{grm}.py)>",
    "rl": "<runs/grm_{grm}/grm_rl/grm: the paper's GRM (configs/paper/grm_{grm}.py)>",
}


def get_config(arg: str = "untrained_qwen25vl_7b"):
    training, _, grm = arg.partition("_")
    if training not in TRAININGS or grm not in GRMS:
        raise ValueError(
            f"configs/eval/grm_baselines.py: argument {arg!r}: expected <training>_<grm> with training "
            f"in {sorted(TRAININGS)} and grm in {sorted(GRMS)}, e.g. untrained_qwen25vl_7b"
        )
    c = rm_benchmarks.get_config()
    c.workdir = f"workdir/eval_rm_{training}_{grm}"
    c.model.kind = "grm"
    c.model.path = TRAININGS[training].format(name=GRMS[grm], grm=grm)
    return c
