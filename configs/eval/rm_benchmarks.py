"""The reward-model benchmarks (docs/evaluation.md) against a GRM or a score-only RM:

    python -m grlhfv_jax.evaluate --config configs/eval/rm_benchmarks.py --workdir OUT \
        --config.root=/data/rm_benchmarks --config.model.path=/runs/x/grm_rl/grm [--config.model.kind=rm]

`root` holds the local copies in their published layouts (paths below are relative to it; see
docs/evaluation.md for how to put each on disk). Disable one with
`--config.benchmarks.<name>.enabled=false`; read a few items with `--config.benchmarks.<name>.limit=50`.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = "workdir/eval_rm"
    c.root = "<root>"
    # kind: grm (judged both orders by our engine; paper template) or rm (scalar head)
    c.model = dict(kind="grm", path="<model>", tokenizer_dir=None, dtype="bfloat16", param_dtype="bfloat16")
    c.image = dict(max_pixels=1024 * 28 * 28)
    # voting_k 5: k = 1 (greedy) and a majority of 5 sampled judgments per order are both reported
    c.judge = dict(max_new_tokens=1024, voting_k=5, temperature=1.0, top_p=1.0)
    c.batch_rows = 16
    c.max_len = 4096
    c.benchmarks = dict(
        vl_rewardbench=dict(path="VL-RewardBench/data"),  # its one parquet
        multimodal_rewardbench=dict(
            path="multimodal_rewardbench/data/all_data.json", image_root="multimodal_rewardbench"
        ),
        mm_rlhf_rewardbench=dict(path="MM-RLHF-RewardBench/mm_reward_bench.jsonl"),
        mllm_judge_pair=dict(path="MLLM-Judge/Dataset/Benchmark/pair.jsonl", image_root="MLLM-Judge/Dataset/image"),
        mllm_judge_score=dict(path="MLLM-Judge/Dataset/Benchmark/score.jsonl", image_root="MLLM-Judge/Dataset/image"),
        # no released evaluation split: a hold-out file of pairwise rows you did not train on
        llava_critic=dict(path="llava-critic-113k/pairwise_holdout", limit=2000),
        beavertails_v=dict(path="BeaverTails-V/*/evaluation-*.parquet"),  # every category's evaluation split
        align_anything=dict(path="align-anything/text-image-to-text/val_1k.parquet"),
    )
    return c
