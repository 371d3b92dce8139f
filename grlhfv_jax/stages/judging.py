"""Running the GRM and the score-only RM on pairs: judgments, accuracy, position consistency."""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from grlhfv_jax import sharding
from grlhfv_jax.rl import grm_reward
from grlhfv_jax.rollout import Judge, SamplingParams
from grlhfv_jax.rollout.engine import bucket_length
from grlhfv_jax.stages import common


class GRMJudge:
    """A GRM on the KV-cache engine behind the `rollout.Judge` protocol.

    judge: items in chunks of `rows` prompts left-padded to `max_len` (fixed shapes: one
    compilation), or with ``max_len=0`` to each chunk's longest prompt rounded up
    (`rollout.engine.bucket_length`: judged texts of any length, a few shapes); judge_groups: up to `max_prompts` groups per call (`policy_rl.judge_prompts_per_call`),
    each group's shared token prefix (system, image, question, ...) prefilled once and its KV cache
    copied to every pair (`rollout.judge_generate`). `rows` and `max_prompts` are memory only:
    sampled judgments (temperature > 0) draw with one key, `params.seed`, each call's rows given
    their place in one draw over all the calls' rows (`params.first_row` / `total_rows`, as
    `stages.common.sample_groups`), so every pair draws what one call over all pairs draws,
    whatever the call size (greedy judgments never depended on it). `frozen`: the weights never
    change (split the model once); a judge being trained passes False."""

    def __init__(self, grm, codec: common.Codec, *, rows: int = 32, max_len: int = 256, max_prompts: int = 16,
                 frozen: bool = True):
        self.grm, self.codec = grm, codec
        self.rows, self.max_len, self.max_prompts = int(rows), int(max_len), int(max_prompts)
        self._engine = common.engine_rollout(grm, codec, frozen=frozen)
        self._split = self._engine._split

    def judge(self, items: Sequence[tuple], params: SamplingParams) -> list[str]:
        codec, n = self.codec, int(params.num_samples)
        # each chunk's rows: its place in one draw over all items (the caller's, if it set one)
        first, total = int(params.first_row), int(params.total_rows) or int(params.first_row) + len(items) * n
        if first + len(items) * n > total:
            raise ValueError(f"GRMJudge.judge: {len(items)} items x {n} samples from row {first} do not fit in "
                             f"params.total_rows = {params.total_rows}")
        texts: list[str] = []
        for start in range(0, len(items), self.rows):
            chunk = items[start:start + self.rows]
            ex = [codec.grm_example(q, img, r1, r2) for q, img, r1, r2 in chunk]
            b = common.batch(ex, codec, side="left",
                             max_len=self.max_len or bucket_length(max(len(e["input_ids"]) for e in ex)))
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
        start = int(counts[:jax.process_index()].sum())
        return self._judge_groups(sharding.gather_objects(list(groups)), params)[start:start + len(groups)]

    def _judge_groups(self, groups: Sequence[tuple], params: SamplingParams) -> list[list[str]]:
        from grlhfv_jax.rollout.judge import decoded_rows, judge_generate, split_common_prefix
        codec, grm, split = self.codec, self.grm, self._split or nnx.split(self.grm)
        if params.num_samples != 1:
            raise ValueError("GRMJudge.judge_groups samples one judgment per pair (num_samples = 1)")
        if params.first_row or params.total_rows:
            raise ValueError("GRMJudge.judge_groups places each call's pairs in one draw itself: params.first_row "
                             f"/ total_rows must be 0, got {params.first_row} / {params.total_rows}")
        # Every call draws with key(seed); call c's decoded rows (its pairs, bucketed) are rows
        # first_c .. of one draw (first_c: pairs of earlier calls), a draw large enough for every
        # call's padded rows. A row's draw depends on its index only (`sampling.row_uniforms`), so
        # pair k draws the same whatever the call size; one call draws exactly its own rows (as before).
        starts = range(0, len(groups), self.max_prompts)
        sizes = [sum(len(pairs) for _, _, pairs in groups[s:s + self.max_prompts]) for s in starts]
        firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        total = max((f + decoded_rows(k) for f, k in zip(firsts, sizes) if k), default=0)
        out: list[list[str]] = []
        for start, first in zip(starts, firsts):
            chunk = [g for g in groups[start:start + self.max_prompts]]
            prefixes, suffixes = [], []
            for q, img, pairs in chunk:
                if not pairs:
                    continue
                full = [codec.grm_example(q, img, a, b) for a, b in pairs]
                prefix, rest = split_common_prefix([f["input_ids"] for f in full])
                prefix = np.asarray(prefix, np.int32)
                prefixes.append(dict(full[0], input_ids=prefix, loss_mask=np.zeros_like(prefix),
                                     mm_token_type_ids=(prefix == grm.config.image_token_id).astype(np.int32)))
                suffixes.append(rest)
            texts: list[str] = []
            if prefixes:
                b = common.batch(prefixes, codec, side="left", max_len=max(len(p["input_ids"]) for p in prefixes))
                gen = judge_generate(grm, b, suffixes, max_new_tokens=params.max_new_tokens,
                                     temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                                     eos_token_id=codec.eos_id, rng=jax.random.key(params.seed),
                                     pad_token_id=codec.pad_id, model_split=split, first_row=first,
                                     total_rows=total)
                texts = codec.decode(*sharding.host_values((gen.tokens, gen.lengths)))
            k = 0
            for q, img, pairs in chunk:
                out.append(texts[k:k + len(pairs)])
                k += len(pairs)
        return out


JUDGE_KINDS = ("grm", "http")


def make_judge(cfg, *, codec: common.Codec, load_grm, workdir: str = "", max_prompts: int = 16) -> Judge:
    """Stage 2's judge from its validated judge section (`config.sections.JUDGE`, e.g. `sec.judge`):
    kind 'grm' -> `GRMJudge` on the model `load_grm()` returns (called only then), frozen, up to
    `max_prompts` groups per call; kind 'http' -> `rollout.http_judge.HTTPJudge` at `base_url`
    serving `model`, sending the codec's GRM template (the run's `config.grm_template`: the prompt
    the in-process judge would see), its cache under `workdir` unless `cache_dir` is absolute."""
    if cfg.kind == "grm":
        return GRMJudge(load_grm(), codec, max_prompts=int(max_prompts))
    if cfg.kind == "http":
        from grlhfv_jax.rollout.http_judge import HTTPJudge
        cache = cfg.cache_dir
        if cache and workdir and "://" not in cache and not os.path.isabs(cache):
            cache = os.path.join(workdir, cache)
        return HTTPJudge(str(cfg.base_url), str(cfg.model), api_key_env=str(cfg.api_key_env),
                         max_concurrency=int(cfg.max_concurrency), timeout_s=float(cfg.timeout_s),
                         max_retries=int(cfg.max_retries), backoff_s=float(cfg.backoff_s),
                         backoff_max_s=float(cfg.backoff_max_s), cache_dir=cache or None,
                         template=codec.grm_template)
    raise ValueError(f"judge kind {cfg.kind!r}: expected one of {', '.join(JUDGE_KINDS)}")


def grm_accuracy(judge: Judge, records: Sequence[dict], *, max_new_tokens: int,
                 prefix: str = "") -> tuple[dict, list[dict]]:
    """Greedy judgments (any `rollout.Judge`) of every pair in both orders.

    accuracy: the paper's pair reward in the dataset's order (ties and unparsed count as wrong);
    accuracy_both: the same over both orders; position_consistency: share of pairs whose two
    orders parse, are not ties and pick the same response; accuracy_decided: the pair reward over
    the judgments (both orders) that parse and are not ties (ordering skill apart from ties);
    parse_failure, tie_rate over all judgments; accuracy_<pair type> (dataset order) when records
    carry `pair_type`. Returns (metrics, per-pair samples for the report)."""
    items = [(r["question"], r["image"], r["response_1"], r["response_2"]) for r in records]
    swapped = [(q, img, b, a) for q, img, a, b in items]
    greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    fwd, rev = judge.judge(items, greedy), judge.judge(swapped, greedy)
    if jax.process_count() > 1:   # each host judged its share of the records: figures over all of them
        keys = ("question", "response_1", "response_2", "overall_response", "pair_type")
        records = sharding.gather_objects([{k: r[k] for k in keys if k in r} for r in records])
        fwd, rev = sharding.gather_objects(fwd), sharding.gather_objects(rev)
    acc, acc_rev, consistent, fails, ties = [], [], [], 0, 0
    decided = []  # pair reward of the judgments (both orders) that parse and are not ties
    samples = []
    for r, t1, t2 in zip(records, fwd, rev):
        label = int(r["overall_response"])
        acc.append(grm_reward.pair_reward(t1, label))
        acc_rev.append(grm_reward.pair_reward(t2, grm_reward.swap_label(label)))
        s1, s2 = grm_reward.pair_scores(t1), grm_reward.pair_scores(t2)
        fails += (s1 is None) + (s2 is None)
        ties += (s1 is not None and s1[0] == s1[1]) + (s2 is not None and s2[0] == s2[1])
        decided += [c for c, s in ((acc[-1], s1), (acc_rev[-1], s2)) if s is not None and s[0] != s[1]]
        if s1 is not None and s2 is not None and s1[0] != s1[1] and s2[0] != s2[1]:
            consistent.append(float((s1[0] > s1[1]) == (s2[1] > s2[0])))
        else:
            consistent.append(0.0)
        samples.append({"question": r["question"], "response_1": r["response_1"], "response_2": r["response_2"],
                        "output": t1, "scores": s1, "preferred": label})
    n = max(len(records), 1)
    metrics = {f"{prefix}accuracy": float(np.mean(acc)) if acc else 0.0,
               f"{prefix}accuracy_both": float(np.mean(acc + acc_rev)) if acc else 0.0,
               f"{prefix}position_consistency": float(np.mean(consistent)) if consistent else 0.0,
               f"{prefix}accuracy_decided": float(np.mean(decided)) if decided else float("nan"),
               f"{prefix}parse_failure": fails / (2 * n), f"{prefix}tie_rate": ties / (2 * n),
               **by_pair_type(records, acc, f"{prefix}accuracy_")}
    return metrics, samples


def by_pair_type(records: Sequence[dict], correct: Sequence[float], prefix: str) -> dict:
    """Mean of `correct` per record `pair_type` (minimal: only the image decides; style: the
    text decides; mixed), as {prefix + type: value}; empty when records carry no pair type."""
    out: dict[str, list] = {}
    for r, c in zip(records, correct):
        if r.get("pair_type"):
            out.setdefault(r["pair_type"], []).append(float(c))
    return {prefix + t: float(np.mean(v)) for t, v in sorted(out.items())}


@nnx.jit
def _scores(model, batch):
    return model.score(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                       batch.get("image_grid_thw"))


SCORE_ROWS = 320   # rows per scoring call by default (policy_rl_rm.score_rows_per_call sets it in a GRPO step)


def _filled_calls(total: int, rows: int):
    """(indices, real) of each call over `total` rows in calls of `rows`: at most `rows` rows are one
    call of their own size; more are calls of exactly `rows`, a short last one filled with copies of
    the last row (index total - 1) whose outputs the caller drops (keeps the first `real`): every call
    has one row count (one compiled shape, the same memory). No rows: no calls."""
    if 0 < total <= rows:
        yield np.arange(total), total
        return
    for start in range(0, total, rows):
        real = min(rows, total - start)
        yield np.concatenate([np.arange(start, start + real), np.full(rows - real, total - 1)]), real


def score_batch(rm, batch: dict, rows: int | None = None) -> np.ndarray:
    """Scalar-head scores [B] of a ready batch (input_ids, attention_mask, pixel_values, image_grid_thw),
    its rows split over the model's mesh (`trainers.loop.place_batch`), `rows` (default SCORE_ROWS:
    divides over 8, 40 and 64 devices) per call; a batch of at most that many is one call. A last
    call of fewer rows is filled up to `rows` with copies of the batch's last row (and its images),
    whose scores are dropped: every call has one row count (one compiled shape, the same memory)."""
    from grlhfv_jax.trainers import grpo as learner
    from grlhfv_jax.trainers import loop
    rows = int(rows or SCORE_ROWS)
    B = int(np.shape(batch["input_ids"])[0])
    if B <= rows:
        return sharding.host_rows(_scores(rm, loop.place_batch(rm, batch)))   # several processes: this host's rows
    tok, merge = rm.config.image_token_id, rm.config.spatial_merge_size
    out = []
    for idx, real in _filled_calls(B, rows):
        part = learner.select_rows(batch, idx, image_token_id=tok, merge_size=merge)
        if "image_grid_thw" in part and not np.asarray(part["image_grid_thw"]).size:   # a slice without images
            part = {k: v for k, v in part.items() if k not in ("pixel_values", "image_grid_thw")}
        out.append(sharding.host_rows(_scores(rm, loop.place_batch(rm, part)))[:real])
    return np.concatenate(out)


def rm_scores(rm, codec, items: Sequence[tuple], *, rows: int, max_len: int) -> np.ndarray:
    """Score-only RM reward for each (question, image, response) item: [len(items)] float, in calls
    of `rows` items padded to `max_len` tokens; more than `rows` items: a short last call is filled
    with copies of the last item (scores dropped, as in `score_batch`): one compiled shape."""
    out = []
    for idx, real in _filled_calls(len(items), int(rows)):
        start = int(idx[0])
        ex = [codec.example(q, img, resp) for q, img, resp in items[start:start + real]]  # each item once
        b = common.batch([ex[i - start] for i in idx], codec, side="right", max_len=max_len)
        b.pop("valid")
        b.pop("loss_mask")
        out.append(score_batch(rm, b, rows=len(idx))[:real])   # one call of this chunk's rows
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def rm_accuracy(rm, codec, records, *, rows: int, max_len: int, prefix: str = "") -> dict:
    """Share of pairs where the RM scores the human-preferred response higher (ties wrong)."""
    items = [(r["question"], r["image"], r[k]) for r in records for k in ("response_1", "response_2")]
    s = rm_scores(rm, codec, items, rows=rows, max_len=max_len).reshape(-1, 2)
    if jax.process_count() > 1:   # each host scored its share of the records: figures over all of them
        s = sharding.gather_rows(s)
        records = sharding.gather_objects([{k: r[k] for k in ("overall_response", "pair_type") if k in r}
                                           for r in records])
    labels = np.array([int(r["overall_response"]) for r in records])
    pred = np.where(s[:, 0] > s[:, 1], 1, np.where(s[:, 1] > s[:, 0], 2, 0))
    return {f"{prefix}accuracy": float(np.mean(pred == labels)) if len(labels) else 0.0,
            **by_pair_type(records, pred == labels, f"{prefix}accuracy_")}
