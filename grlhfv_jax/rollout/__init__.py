"""The sampler: prefill + jitted decode with a KV cache, sampling filters, per-token log-probs,
and a shared-prefix judge path for the GRM (see engine.py, sampling.py, judge.py)."""
from .engine import GenerationOutput, bucket_length, generate
from .judge import judge_generate, judge_texts, split_common_prefix
from .sampling import filter_logits, sample_from_logits, token_logprobs

__all__ = ["GenerationOutput", "bucket_length", "generate", "judge_generate", "judge_texts", "split_common_prefix",
           "filter_logits", "sample_from_logits", "token_logprobs"]
