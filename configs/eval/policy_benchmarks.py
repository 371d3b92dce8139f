"""The paper's seven policy benchmarks (docs/evaluation.md) for a trained policy, judged by a
GPT-4o-class model over an OpenAI-compatible endpoint (never the trained GRM):

    OPENAI_API_KEY=... python -m grlhfv_jax.evaluate --config configs/eval/policy_benchmarks.py --workdir OUT \
        --config.root=/data/policy_benchmarks --config.model.path=/runs/x/policy_rl/policy \
        [--config.judge.base_url=https://api.openai.com --config.judge.model=gpt-4o-2024-08-06]

`root` holds the local copies in their published layouts (paths below are relative to it; see
docs/evaluation.md for how to put each on disk). Disable one with
`--config.benchmarks.<name>.enabled=false`; answer a few items with `--config.benchmarks.<name>.limit=20`;
change an answer length with `--config.benchmarks.<name>.max_new_tokens=N`. The judge's replies are
cached in OUT/judge_cache (a rerun sends nothing already answered).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = "workdir/eval_policy"
    c.root = "<root>"
    c.model = dict(kind="policy", path="<model>", tokenizer_dir=None, dtype="bfloat16", param_dtype="bfloat16")
    c.image = dict(max_pixels=1024 * 28 * 28)
    # the benchmark judge: GPT-4o-class, greedy; refused when it is the model under test or a GRM of its run
    c.judge = dict(
        base_url="https://api.openai.com",
        model="gpt-4o-2024-08-06",
        api_key_env="OPENAI_API_KEY",
        max_concurrency=8,
        timeout_s=120.0,
        max_retries=5,
        completion_tokens=1024,
        allow_trained_judge=False,
    )
    c.batch_rows = 16
    c.max_len = 4096
    c.benchmarks = dict(
        mia_bench=dict(path="MIA-Bench/data"),  # lmms-lab/MIA-Bench parquet
        llava_bench=dict(path="llava-bench-in-the-wild/data"),  # lmms-lab parquet or the original folder
        llava_wilder=dict(path="LLaVA-Bench-Wilder/data/small-00000-of-00001.parquet"),
        mm_vet=dict(path="mm-vet/mm-vet.json"),  # images in mm-vet/images/
        mm_vet_v2=dict(path="mm-vet-v2/mm-vet-v2.json"),  # images in mm-vet-v2/images/
        mm_safetybench=dict(path="MM-SafetyBench/data"),  # processed_questions/ + imgs/
        mss_bench=dict(path="mssbench/combined.json"),  # chat/ and embodied/ beside it
    )
    return c
