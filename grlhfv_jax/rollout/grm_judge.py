"""The GRM on the KV-cache engine behind the `rollout.Judge` protocol (`GRMJudge`)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from grlhfv_jax import encoding, sharding
from grlhfv_jax.rollout import group_sampling
from grlhfv_jax.rollout.engine import bucket_length
from grlhfv_jax.rollout.protocol import SamplingParams


class GRMJudge:
    """A GRM on the KV-cache engine behind the `rollout.Judge` protocol.

    judge: items in chunks of `rows` prompts left-padded to `max_len` (fixed shapes: one
    compilation), or with ``max_len=0`` to each chunk's longest prompt rounded up
    (`rollout.engine.bucket_length`: judged texts of any length, a few shapes); judge_groups: up to `max_prompts` groups per call (`policy_rl.judge_prompts_per_call`),
    each group's shared token prefix (system, image, question, ...) prefilled once and its KV cache
    copied to every pair (`rollout.judge_generate`). `rows` and `max_prompts` are memory only:
    sampled judgments (temperature > 0) draw with one key, `params.seed`, each call's rows given
    their place in one draw over all the calls' rows (`params.first_row` / `total_rows`, as
    `rollout.group_sampling.sample_groups`), so every pair draws what one call over all pairs draws,
    whatever the call size (greedy judgments never depended on it). `frozen`: the weights never
    change (split the model once); a judge being trained passes False."""

    def __init__(
        self,
        grm,
        codec: encoding.Codec,
        *,
        rows: int = 32,
        max_len: int = 256,
        max_prompts: int = 16,
        frozen: bool = True,
    ):
        self.grm, self.codec = grm, codec
        self.rows, self.max_len, self.max_prompts = int(rows), int(max_len), int(max_prompts)
        self._engine = group_sampling.engine_rollout(grm, codec, frozen=frozen)
        self._split = self._engine.model_split

    def judge(self, items: Sequence[tuple], params: SamplingParams) -> list[str]:
        codec, n = self.codec, int(params.num_samples)
        # each chunk's rows: its place in one draw over all items (the caller's, if it set one)
        first, total = int(params.first_row), int(params.total_rows) or int(params.first_row) + len(items) * n
        if first + len(items) * n > total:
            raise ValueError(
                f"GRMJudge.judge: {len(items)} items x {n} samples from row {first} do not fit in "
                f"params.total_rows = {params.total_rows}"
            )
        texts: list[str] = []
        for start in range(0, len(items), self.rows):
            chunk = items[start : start + self.rows]
            ex = [codec.grm_example(q, img, r1, r2) for q, img, r1, r2 in chunk]
            b = encoding.batch(
                ex, codec, side="left", max_len=self.max_len or bucket_length(max(len(e["input_ids"]) for e in ex))
            )
            out = self._engine.generate(b, params.replace(first_row=first + start * n, total_rows=total))
            keep = len(chunk) * n
            texts.extend(codec.decode(np.asarray(out.tokens), np.asarray(out.lengths))[:keep])
        return texts

    def judge_groups(self, groups: Sequence[tuple], params: SamplingParams) -> list[list[str]]:
        if jax.process_count() == 1:
            return self._judge_groups(groups, params)
        # Several processes: the shared-prefix judge places host arrays as global ones, so every host
        # judges every host's groups (gathered in process order: the same arrays everywhere) and
        # keeps the judgments of its own.
        counts = sharding.gather_rows(np.asarray([len(groups)], np.int32))
        start = int(counts[: jax.process_index()].sum())
        return self._judge_groups(sharding.gather_objects(list(groups)), params)[start : start + len(groups)]

    def _judge_groups(self, groups: Sequence[tuple], params: SamplingParams) -> list[list[str]]:
        from grlhfv_jax.rollout.judge import (
            decoded_rows,
            judge_generate,
            split_common_prefix,
        )

        codec, grm, split = self.codec, self.grm, self._split or nnx.split(self.grm)
        if params.num_samples != 1:
            raise ValueError("GRMJudge.judge_groups samples one judgment per pair (num_samples = 1)")
        if params.first_row or params.total_rows:
            raise ValueError(
                "GRMJudge.judge_groups places each call's pairs in one draw itself: params.first_row "
                f"/ total_rows must be 0, got {params.first_row} / {params.total_rows}"
            )
        # Every call draws with key(seed); call c's decoded rows (its pairs, bucketed) are rows
        # first_c .. of one draw (first_c: pairs of earlier calls), a draw large enough for every
        # call's padded rows. A row's draw depends on its index only (`sampling.row_uniforms`), so
        # pair k draws the same whatever the call size; one call draws exactly its own rows (as before).
        starts = range(0, len(groups), self.max_prompts)
        sizes = [sum(len(pairs) for _, _, pairs in groups[s : s + self.max_prompts]) for s in starts]
        firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        total = max((f + decoded_rows(k) for f, k in zip(firsts, sizes) if k), default=0)
        out: list[list[str]] = []
        for start, first in zip(starts, firsts):
            chunk = [g for g in groups[start : start + self.max_prompts]]
            prefixes, suffixes = [], []
            for q, img, pairs in chunk:
                if not pairs:
                    continue
                img = codec.prepare_image(img)  # the processor once per group, not per pair
                full = [codec.grm_example(q, img, a, b) for a, b in pairs]
                prefix, rest = split_common_prefix([f["input_ids"] for f in full])
                prefix = np.asarray(prefix, np.int32)
                prefixes.append(
                    dict(
                        full[0],
                        input_ids=prefix,
                        loss_mask=np.zeros_like(prefix),
                        mm_token_type_ids=(prefix == grm.image_layout.image_token_id).astype(np.int32),
                    )
                )
                suffixes.append(rest)
            texts: list[str] = []
            if prefixes:
                b = encoding.batch(prefixes, codec, side="left", max_len=max(len(p["input_ids"]) for p in prefixes))
                gen = judge_generate(
                    grm,
                    b,
                    suffixes,
                    max_new_tokens=params.max_new_tokens,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    eos_token_id=codec.eos_id,
                    rng=jax.random.key(params.seed),
                    pad_token_id=codec.pad_id,
                    model_split=split,
                    first_row=first,
                    total_rows=total,
                )
                texts = codec.decode(*sharding.host_values((gen.tokens, gen.lengths)))
            k = 0
            for _q, _img, pairs in chunk:
                out.append(texts[k : k + len(pairs)])
                k += len(pairs)
        return out
