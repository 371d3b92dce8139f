"""Shared-prefix generation for the GRM: many candidate pairs judged against one image + question.

The GRM prompt of pair (i, j) is  [shared prefix: system, image, question, "# Response 1: "]
+ [suffix: response i, "# Response 2: ", response j, the template's tail, assistant header].
For n candidates the n(n-1) ordered pairs of one prompt share the prefix, which holds the image
(the expensive part). `judge_generate`:

1. encodes each prompt's image once and prefills each prefix once (cache rows = prompts);
2. gathers the prefix cache to one row per pair (a copy, no recomputation);
3. prefills every pair's own suffix into slots [P, P + Ts): suffixes of different lengths are
   left-padded INSIDE that block (mask 0 holes; a query never attends to a hole), and their
   positions continue from the prefix (passed explicitly: prefix's next position + k, in the
   model's layout: `text_position_ids`);
4. decodes as `generate` does (slot q of a row has position q + that row's delta).

The result equals judging every pair with its full prompt (tested), at the cost of one prefix
prefill per prompt instead of one per pair.

`judge_texts` builds the token ids from text with the GRM template (grlhfv_jax.rl.grm_reward)
and the Qwen2-VL chat format (grlhfv_jax.processing); it splits each prompt's pairs at their
longest common TOKEN prefix, so the tokenization is exactly that of the full prompts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhfv_jax import sharding
from grlhfv_jax.rollout import engine
from grlhfv_jax.rollout.engine import GenerationOutput, bucket_length


@functools.partial(jax.jit, static_argnames=("graphdef", "prefix_len", "num_samples", "mesh"))
def _gather_and_prefill_suffix(
    graphdef,
    state,
    cache,
    prefix_deltas,
    row_prompt,
    suffix_ids,
    suffix_mask,
    *,
    prefix_len: int,
    num_samples: int,
    mesh,
):
    """Copy prefix cache rows to pair rows and prefill each pair's suffix at slots [prefix_len, prefix_len + Ts).

    cache: rows = prompts, prefix in slots [0, prefix_len); prefix_deltas [n_prompts] (next
    position - prefix_len); row_prompt [R] int32; suffix_ids / suffix_mask [R, Ts] (left-padded
    inside the block). Returns (cache with R*num_samples rows, last logits [R*n, V], deltas [R*n])."""
    model = nnx.merge(graphdef, state)
    cache = engine.map_cache_rows(lambda x, axis: jnp.take(x, row_prompt, axis=axis), cache)
    cache = engine.constrain_cache(cache, mesh)
    R, Ts = suffix_ids.shape
    next_pos = prefix_len + jnp.take(prefix_deltas, row_prompt)  # [R] position of the first suffix token
    k = jnp.cumsum(suffix_mask, axis=1) - 1
    pos = jnp.where(suffix_mask > 0, next_pos[:, None] + k, 1).astype(jnp.int32)
    logits, cache = engine.last_logits(model, suffix_ids, suffix_mask, model.text_position_ids(pos), cache, prefix_len)
    deltas = (next_pos + jnp.sum(suffix_mask, axis=1) - (prefix_len + Ts)).astype(jnp.int32)
    cache = engine.constrain_cache(engine.repeat_rows(cache, num_samples), mesh)
    rest = engine.repeat_rows({"logits": logits, "deltas": deltas}, num_samples)
    return cache, sharding.constrain_rows(rest["logits"], mesh), sharding.constrain_rows(rest["deltas"], mesh)


def decoded_rows(n_pairs: int, num_samples: int = 1) -> int:
    """Rows one `judge_generate` call decodes for `n_pairs` pairs: the pair count bucketed (fewer
    compiles; the padding rows produce nothing) times num_samples."""
    return bucket_length(n_pairs, minimum=1) * int(num_samples)


def judge_generate(
    model,
    prefix_batch: dict,
    suffix_ids: Sequence[Sequence[Sequence[int]]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_id=None,
    num_samples: int = 1,
    rng=None,
    pad_token_id: int = 0,
    model_split=None,
    first_row: int = 0,
    total_rows: int | None = None,
) -> GenerationOutput:
    """Generate for every (prompt, pair) with the prompt's prefix cache shared by its pairs.

    prefix_batch: processor-style dict of the shared prefixes (one row per prompt, left-padded
    `input_ids` / `attention_mask`, optional `pixel_values` / `image_grid_thw`; all images must
    sit in the prefix). suffix_ids[p]: the token-id lists of prompt p's pairs (each non-empty,
    text only). Rows of the output: prompt-major, then pair, then sample:
    (p, j, s) -> row (offset_p + j) * num_samples + s, offset_p = number of pairs of earlier prompts.
    `first_row`, `total_rows`: as `generate`, for the call's decoded rows (`decoded_rows`: padding
    included): row r draws what row first_row + r of a draw of total_rows rows draws (default:
    this call's rows), so pairs judged in several calls, each given its first row's place, draw
    what one call over all of them draws. Other arguments as `generate` (temperature 0.0, the
    default here, is greedy).
    """
    n_prompts = np.asarray(prefix_batch["input_ids"]).shape[0]
    if len(suffix_ids) != n_prompts:
        raise ValueError(f"suffix_ids has {len(suffix_ids)} entries but prefix_batch has {n_prompts} prompts")
    rows = [(p, list(s)) for p, pairs in enumerate(suffix_ids) for s in pairs]
    if not rows:
        raise ValueError("no pairs to judge")
    for p, s in rows:
        if not s:
            raise ValueError(f"prompt {p}: a pair has an empty suffix (it needs at least one token)")
    image_id = model.image_layout.image_token_id
    if any(image_id in s for _, s in rows):
        raise ValueError("a suffix holds image tokens; images must be in the shared prefix")
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError("num_samples and max_new_tokens must be >= 1")
    R = len(rows)
    R_pad = decoded_rows(R)
    Ts = bucket_length(max(len(s) for _, s in rows))
    sid = np.full((R_pad, Ts), pad_token_id, np.int32)
    smask = np.zeros((R_pad, Ts), np.int32)
    row_prompt = np.zeros((R_pad,), np.int32)
    for r, (p, s) in enumerate(rows):
        sid[r, Ts - len(s) :] = s
        smask[r, Ts - len(s) :] = 1
        row_prompt[r] = p

    split = model_split if model_split is not None else nnx.split(model)
    graphdef, state = split
    mesh = engine.model_mesh(state)
    buf_len = bucket_length(max_new_tokens)
    cache, _, prefix_deltas, prefix_len = engine.prefill(
        split,
        prefix_batch,
        layout=model.image_layout,
        cache_len_extra=Ts + buf_len,
        num_samples=1,
        mesh=mesh,
        pad_id=pad_token_id,
    )
    cache, logits, deltas = _gather_and_prefill_suffix(
        graphdef,
        state,
        cache,
        prefix_deltas,
        sharding.place_rows(row_prompt, mesh),
        sharding.place_rows(sid, mesh),
        sharding.place_rows(smask, mesh),
        prefix_len=prefix_len,
        num_samples=num_samples,
        mesh=mesh,
    )
    done = np.repeat(np.arange(R_pad) >= R, num_samples)  # padding rows: done from the start
    out = engine.decode(
        split,
        cache,
        logits,
        deltas,
        first_slot=prefix_len + Ts,
        max_new_tokens=max_new_tokens,
        buf_len=buf_len,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        eos_token_id=eos_token_id,
        rng=rng,
        done=done,
        pad_token_id=pad_token_id,
        mesh=mesh,
        first_row=first_row,
        total_rows=total_rows,
    )
    n = R * num_samples
    return GenerationOutput(out.tokens[:n], out.logprobs[:n], out.lengths[:n], out.finished[:n])


def split_common_prefix(seqs: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """(longest common prefix, the rest of each sequence); every rest keeps at least one token."""
    seqs = [list(s) for s in seqs]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("split_common_prefix needs non-empty sequences")
    n = min(len(s) for s in seqs) - 1
    c = 0
    while c < n and all(s[c] == seqs[0][c] for s in seqs):
        c += 1
    return seqs[0][:c], [s[c:] for s in seqs]


def judge_texts(
    model,
    tokenizer,
    image_processor,
    items: Sequence[dict],
    *,
    max_new_tokens: int,
    principles=None,
    system=None,
    **gen_kw,
):
    """Judge pairs given as text with the GRM template.

    items: dicts with `question` (str), `image` (PIL / path / uint8 array, or None) and `pairs`
    (list of (response_1, response_2) strings). Every pair's full chat prompt is tokenized; the
    pairs of one item are split at their longest common token prefix (which must hold the image)
    and judged with `judge_generate`. Returns (GenerationOutput, texts: list per item of list per
    pair of list per sample of the decoded judgment str).
    """
    from grlhfv_jax import processing
    from grlhfv_jax.rl import grm_reward

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    layout = model.image_layout
    prefixes, suffixes = [], []
    for it, item in enumerate(items):
        images = [item["image"]] if item.get("image") is not None else []
        full = []
        for r1, r2 in item["pairs"]:
            user = grm_reward.build_grm_prompt(
                item["question"], r1, r2, principles, image_token=grm_reward.IMAGE_PLACEHOLDER if images else None
            )
            text = processing.chat_prompt(user, num_images=len(images), system=system)
            full.append(
                processing.encode_example(tokenizer, image_processor, text, images)
                if not full
                else dict(full[0], input_ids=_reencode(tokenizer, text, full[0], layout))
            )
        prefix, rest = split_common_prefix([f["input_ids"] for f in full])
        if int(np.sum(np.asarray(prefix) == layout.image_token_id)) != int(
            np.sum(np.asarray(full[0]["input_ids"]) == layout.image_token_id)
        ):
            raise ValueError(f"item {it}: the pairs' common prefix does not hold the whole image")
        prefixes.append(
            dict(
                full[0],
                input_ids=np.asarray(prefix, np.int32),
                mm_token_type_ids=np.zeros(len(prefix), np.int32),
                loss_mask=np.zeros(len(prefix), np.int32),
            )
        )
        suffixes.append(rest)
    batch = processing.collate(prefixes, pad_id=pad_id, side="left")
    if batch["image_grid_thw"].shape[0] == 0:
        batch["pixel_values"] = None
    num_samples = gen_kw.get("num_samples", 1)
    out = judge_generate(model, batch, suffixes, max_new_tokens=max_new_tokens, pad_token_id=pad_id, **gen_kw)
    toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    texts, r = [], 0
    for item in items:
        per_pair = []
        for _ in item["pairs"]:
            per_pair.append(
                [
                    tokenizer.decode(toks[r + s, : lengths[r + s]].tolist(), skip_special_tokens=True)
                    for s in range(num_samples)
                ]
            )
            r += num_samples
        texts.append(per_pair)
    return out, texts


def _reencode(tokenizer, text, first, layout):
    """Token ids of `text` with its image blocks expanded like `first` (same images; `layout`: the
    model's `image_layout`)."""
    from grlhfv_jax import processing

    ids = tokenizer.encode(text, add_special_tokens=False)
    counts = layout.tokens_per_image(first["image_grid_thw"])
    return processing.expand_image_tokens(ids, counts, layout.image_token_id)
