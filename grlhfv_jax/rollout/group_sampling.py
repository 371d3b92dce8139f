"""Sampling groups of responses per prompt through any `Rollout`: the engine as a Rollout (and
its multi-host wrapper), calls split into whole prompt groups, outputs joined and cut before
tokens a response must not hold."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from grlhfv_jax import sharding
from grlhfv_jax.encoding import Codec, batch
from grlhfv_jax.rollout.protocol import SamplingParams


def engine_rollout(model, codec: Codec, *, frozen: bool = False):
    """The KV-cache engine as a `rollout.Rollout` for `model`, with the codec's EOS and pad ids."""
    from grlhfv_jax.rollout import EngineRollout

    engine = EngineRollout(model, eos_token_id=codec.eos_id, pad_token_id=codec.pad_id, frozen=frozen)
    return HostRowsRollout(engine) if jax.process_count() > 1 else engine


class HostRowsRollout:
    """Several processes: a `rollout.Rollout` whose callers hand it this host's prompt rows and get
    this host's output rows back, while the engine samples the global batch. The hosts' prompts are
    gathered host-side in process order (`sharding.gather_batch`: the rows and their images; host p's
    rows are block p), the engine runs on that global batch (its arrays placed over the whole mesh),
    the outputs come back to every host (`sharding.host_values`) and each keeps its block of rows
    (prompt p's samples stay together: block p of the prompts is block p of the rows). Every host
    must call `generate` for the same number of equally sized batches (it runs collectives).
    A call that is part `first_row` of a sample of `total_rows` rows (per host) draws rows from the
    global sample of `total_rows * process_count` rows starting at `first_row * process_count`: no
    row shares another's draws, though a run split into several calls draws other values than one
    process does (one call: the same as one process)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, batch: dict, params):
        from grlhfv_jax.rollout import GenerationOutput

        count = jax.process_count()
        rows = int(np.shape(batch["input_ids"])[0])
        if int(params.total_rows or 0):
            params = params.replace(first_row=int(params.first_row) * count, total_rows=int(params.total_rows) * count)
        out = sharding.host_values(tuple(self.inner.generate(sharding.gather_batch(batch), params)))
        n = out[0].shape[0] // (rows * count)  # samples per prompt
        sl = sharding.process_slice(out[0].shape[0])
        assert sl.stop - sl.start == rows * n
        return GenerationOutput(*(np.asarray(x)[sl] for x in out))


def sample_groups(rollout, codec: Codec, examples: list[dict], *, max_len: int, params, num_calls: int = 1):
    """Samples `params.num_samples` responses per prompt example (rows grouped by prompt) from any
    `rollout.Rollout`, in `num_calls` calls of len(examples) / num_calls whole prompt groups each
    (memory: the prefill and KV cache of one call), joined in prompt order (`join_outputs`).
    Each call gets its rows' place in the step (`params.first_row`, `total_rows`): the engine draws
    for every row what one call would, so any `num_calls` samples what one call samples.

    Returns (left-padded prompt batch of all examples, GenerationOutput [P * num_samples, ...] with
    responses cut before any image or vision token, decoded texts)."""
    P, n = len(examples), int(params.num_samples)
    if num_calls < 1 or P % num_calls:
        raise ValueError(f"sample_groups: num_calls = {num_calls} must divide the {P} prompts")
    prompts = batch(examples, codec, side="left", max_len=max_len)
    if num_calls == 1:
        out = rollout.generate(prompts, params)
    else:
        per = P // num_calls
        out = join_outputs(
            [
                rollout.generate(
                    batch(examples[s : s + per], codec, side="left", max_len=max_len),
                    params.replace(first_row=s * n, total_rows=P * n),
                )
                for s in range(0, P, per)
            ],
            pad_id=codec.pad_id,
        )
    gen = cut_at_tokens(out, codec.banned_ids())
    return prompts, gen, codec.decode(np.asarray(gen.tokens), np.asarray(gen.lengths))


def join_outputs(outs: Sequence, *, pad_id: int):
    """GenerationOutputs of consecutive row blocks -> one (numpy), rows in order; tokens [N_i, W_i]
    right-padded with `pad_id` and logprobs with 0 to the widest W_i; lengths, finished [sum N_i]."""
    from grlhfv_jax.rollout import GenerationOutput

    width = max(np.asarray(o.tokens).shape[1] for o in outs)

    def pad(x, value):
        x = np.asarray(x)
        return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)

    return GenerationOutput(
        np.concatenate([pad(o.tokens, pad_id) for o in outs]),
        np.concatenate([pad(o.logprobs, 0.0) for o in outs]),
        np.concatenate([np.asarray(o.lengths) for o in outs]),
        np.concatenate([np.asarray(o.finished) for o in outs]),
    )


def cut_at_tokens(gen, banned_ids):
    """Ends each row before its first banned token (image / vision markers a model may emit).

    Such a token cannot be fed back as text (it would claim an image that is not there), so the
    response is cut just before it and counted as unfinished (truncated): it gets the incomplete
    reward and its remaining tokens are padding. Returns a new GenerationOutput (numpy).
    """
    from grlhfv_jax.rollout import GenerationOutput

    tokens, lengths = np.asarray(gen.tokens).copy(), np.asarray(gen.lengths).copy()
    finished, logprobs = np.asarray(gen.finished).copy(), np.asarray(gen.logprobs).copy()
    live = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    bad = np.isin(tokens, np.asarray(list(banned_ids))) & live
    for r in np.flatnonzero(bad.any(axis=1)):
        cut = int(np.argmax(bad[r]))
        lengths[r], finished[r] = cut, False
        logprobs[r, cut:] = 0.0
    return GenerationOutput(tokens, logprobs, lengths, finished)


def answers(
    model,
    codec,
    recs,
    *,
    max_len: int,
    max_new_tokens: int,
    rows: int = 64,
    samples: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
) -> tuple[list, np.ndarray]:
    """Answers to `recs`: greedy (default) or `samples` per prompt at `temperature` (rows grouped
    by prompt). Returns (texts [len(recs) * samples], finished [len(recs) * samples])."""
    texts, done = [], []
    rollout = engine_rollout(model, codec, frozen=True)
    for s in range(0, len(recs), rows):
        chunk = recs[s : s + rows]
        b = batch(
            [codec.example(r["question"], r["image"]) for r in chunk], codec, side="left", max_len=max_len, rows=rows
        )
        out = rollout.generate(
            b,
            SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, num_samples=samples, seed=seed + s),
        )
        keep = len(chunk) * samples
        texts += codec.decode(np.asarray(out.tokens), np.asarray(out.lengths))[:keep]
        done += list(np.asarray(out.finished)[:keep])
    return texts, np.array(done)
