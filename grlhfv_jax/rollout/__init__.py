"""The sampler: prefill + jitted decode with a KV cache, sampling filters, per-token log-probs,
a shared-prefix judge path for the GRM (engine.py, sampling.py, judge.py), and the protocols the
stages call (protocol.py: `SamplingParams`, `Rollout`, `Judge`)."""

from .engine import EngineRollout, GenerationOutput, bucket_length, generate
from .judge import judge_generate, judge_texts, split_common_prefix
from .protocol import Judge, Rollout, SamplingParams
from .sampling import filter_logits, sample_from_logits, token_logprobs

__all__ = [
    "EngineRollout",
    "GenerationOutput",
    "Judge",
    "Rollout",
    "SamplingParams",
    "bucket_length",
    "generate",
    "judge_generate",
    "judge_texts",
    "split_common_prefix",
    "filter_logits",
    "sample_from_logits",
    "token_logprobs",
]
