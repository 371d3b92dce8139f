"""Reward-model and policy benchmarks read from local copies in their published layouts: one module per
benchmark (reader + figures side by side, `common` says what a module holds).

    get(name) -> module     REGISTRY: reward-model benchmarks, name -> module (or class) with NAME,
                            TASK, FORMAT, FIELDS, LEADERBOARD, read, figures; POLICY: the policy
                            benchmarks (_policy says what such a module holds); ALL: both
"""

from __future__ import annotations

from grlhfv_jax.data.benchmarks import (
    align_anything,
    beavertails_v,
    common,
    llava_bench,
    llava_critic,
    llava_wilder,
    mia_bench,
    mllm_judge,
    mm_rlhf_rewardbench,
    mm_safetybench,
    mm_vet,
    mm_vet_v2,
    mss_bench,
    multimodal_rewardbench,
    vl_rewardbench,
)

REGISTRY = {
    m.NAME: m
    for m in (
        vl_rewardbench,
        multimodal_rewardbench,
        mm_rlhf_rewardbench,
        mllm_judge.Pair,
        mllm_judge.Score,
        llava_critic,
        beavertails_v,
        align_anything,
    )
}
# policy benchmarks (TASK "policy": the model answers, a judge model grades; _policy says what a module holds)
POLICY = {m.NAME: m for m in (mia_bench, llava_bench, llava_wilder, mm_vet, mm_vet_v2, mm_safetybench, mss_bench)}
ALL = {**REGISTRY, **POLICY}  # every benchmark the evaluator knows


def get(name: str):
    if name not in ALL:
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(ALL)})")
    return ALL[name]


__all__ = ["ALL", "POLICY", "REGISTRY", "common", "get"]
