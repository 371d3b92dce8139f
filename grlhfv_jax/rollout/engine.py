"""KV-cache sampler for any model of the family contract (`models.contract.VLModel`): prefill once per
prompt, then a jitted decode loop.

    generate(model, batch, *, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
             eos_token_id=None, num_samples=1, rng=None) -> GenerationOutput

Layout of the cache (model.init_cache): slots [0, P) hold the (left-padded) prompt, slot P + t the
t-th generated token. Every row shares the slot index, so one `dynamic_update_slice` per layer
writes a decode step. The prompt's cache is computed once and repeated to its `num_samples` rows.

Compiled functions are module-level `jax.jit`s whose static arguments are the model's graphdef
and the sampling switches; jax keys its executable cache on those and on the argument shapes, so
an RL loop with a fixed batch compiles once. Prompt lengths and the generation length are rounded
up to buckets (`bucket_length`) so that varying lengths reuse a few executables; the true
`max_new_tokens` is a traced loop bound.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from grlhfv_jax import sharding
from grlhfv_jax.models import contract
from grlhfv_jax.rollout import sampling


class GenerationOutput(NamedTuple):
    """Rows grouped by prompt: samples of prompt p are rows p*num_samples .. p*num_samples+n-1.

    tokens   [N, max_new_tokens] int32, `pad_token_id` after the end (the EOS token is included)
    logprobs [N, max_new_tokens] float32, log-softmax of the raw logits at each sampled token, 0 after the end
    lengths  [N] int32, generated tokens per row (EOS included)
    finished [N] bool, True iff the row produced an EOS token (False: truncated at max_new_tokens)
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    finished: jax.Array


# ----------------------------------------------------------------------------- shapes


def bucket_length(n: int, multiple: int = 64, minimum: int = 8) -> int:
    """Round a length up: next power of two up to `multiple`, then the next multiple of `multiple`."""
    n = max(int(n), minimum)
    if n <= multiple:
        return 1 << (n - 1).bit_length()
    return int(math.ceil(n / multiple) * multiple)


def _eos_array(eos_token_id) -> np.ndarray:
    if eos_token_id is None:
        return np.full((1,), -1, np.int32)  # matches no token
    ids = [eos_token_id] if np.isscalar(eos_token_id) else list(eos_token_id)
    if not ids:
        return np.full((1,), -1, np.int32)
    return np.asarray(ids, np.int32)


def _left_pad(x, width: int, value):
    """Pad [B, T] on the left to [B, width]."""
    x = np.asarray(x)
    if x.shape[1] > width:
        raise ValueError(f"sequence of length {x.shape[1]} does not fit bucket {width}")
    return np.pad(x, ((0, 0), (width - x.shape[1], 0)), constant_values=value)


# ----------------------------------------------------------------------------- sharding


def model_mesh(state):
    """The mesh the model's parameters live on, or None (single device / unsharded)."""
    mesh = sharding.model_mesh(state)
    return mesh if mesh is not None and mesh.size > 1 else None


def constrain_cache(cache, mesh):
    """Rows over the batch axes, kv heads over 'tensor' (`sharding.rows_spec`). k/v: [L, B, Hkv, S, D]
    or a tuple of L arrays [B, Hkv, S, D] (the decode loop's layout)."""
    if mesh is None:
        return cache

    def one(x, lead):
        spec = sharding.rows_spec(
            mesh, x.shape[lead], x.ndim, row_dim=lead, head_dim=lead + 1, n_heads=x.shape[lead + 1]
        )
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    out = dict(cache)
    for name in ("k", "v"):
        x = cache[name]
        out[name] = tuple(one(a, 0) for a in x) if isinstance(x, tuple) else one(x, 1)
    out["mask"] = sharding.constrain_rows(cache["mask"], mesh)
    return out


def _unstack_cache(cache):
    """k/v [L, ...] -> tuples of L per-layer arrays. In the decode loop the model reads layer i as
    `cache["k"][i]` and returns `jnp.stack` of the updated layers; with per-layer arrays in the
    loop carry XLA folds slice(stack(...)) away and updates each layer in place, instead of
    copying the whole cache every step (slice + stack of a stacked carry)."""

    def split(x):
        return x if isinstance(x, tuple) else tuple(x[i] for i in range(x.shape[0]))

    return dict(cache, k=split(cache["k"]), v=split(cache["v"]))


# ----------------------------------------------------------------------------- jitted pieces


def last_logits(model, input_ids, attention_mask, position_ids, cache, cache_index, image_embeds=None):
    """Forward T tokens into the cache; returns (logits of the last column [B, V] float32, cache).
    Only the last column goes through the LM head (a prompt's other logits are never used)."""
    h, cache = model(
        input_ids,
        attention_mask,
        position_ids=position_ids,
        cache=cache,
        cache_index=cache_index,
        image_embeds=image_embeds,
        return_hidden=True,
    )
    return model.logits(h[:, -1]).astype(jnp.float32), cache


def map_cache_rows(fn, tree, cache_keys=("k", "v")):
    """fn(x, row_axis) on every array of a dict; cache k/v have rows on axis 1 when stacked
    [L, B, ...] and on axis 0 in each layer of a per-layer tuple."""
    out = {}
    for name, x in tree.items():
        if name in cache_keys and isinstance(x, tuple):
            out[name] = tuple(fn(a, 0) for a in x)
        else:
            out[name] = fn(x, 1 if name in cache_keys else 0)
    return out


def repeat_rows(tree, n: int, cache_keys=("k", "v")):
    """Repeat every row n times (row r -> rows r*n .. r*n+n-1), either cache layout."""
    if n == 1:
        return tree
    return map_cache_rows(lambda x, axis: jnp.repeat(x, n, axis=axis), tree, cache_keys)


def per_layer_cache(model, cache, n_rows: int, first_slot):
    """The cache as per-layer tuples when the model's cached forward takes them (it indexes
    cache["k"][i] and returns the layout it was given), else as it is. Per-layer arrays let the
    decode loop update each layer in place and be donated to it (see `_decode`)."""
    split = _unstack_cache(cache)
    try:
        pos = model.text_position_ids(jnp.zeros((n_rows, 1), jnp.int32))
        out = jax.eval_shape(
            lambda c: model(
                jnp.zeros((n_rows, 1), jnp.int32),
                jnp.ones((n_rows, 1), jnp.int32),
                position_ids=pos,
                cache=c,
                cache_index=first_slot,
                return_hidden=True,
            )[1],
            split,
        )
    except (AttributeError, TypeError, IndexError, ValueError):
        return cache
    return split if isinstance(out["k"], tuple) else cache


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "num_samples", "mesh"))
def _prefill(
    graphdef, state, input_ids, attention_mask, image_embeds, image_grid_thw, *, cache_len: int, num_samples: int, mesh
):
    """Prompt -> (cache with the prompt in slots [0, T), repeated to B * num_samples rows (per-layer
    tuples when the model takes them: `per_layer_cache`), last logits [B*n, V], slot->position
    deltas [B*n])."""
    model = nnx.merge(graphdef, state)
    B, T = input_ids.shape
    position_ids, _ = model.rope_index(input_ids, attention_mask, image_grid_thw)
    deltas = contract.next_slot_deltas(position_ids, attention_mask)
    cache = constrain_cache(per_layer_cache(model, model.init_cache(B, cache_len), B, T), mesh)
    logits, cache = last_logits(model, input_ids, attention_mask, position_ids, cache, 0, image_embeds)
    cache = constrain_cache(repeat_rows(cache, num_samples), mesh)
    rest = repeat_rows({"logits": logits, "deltas": deltas}, num_samples)
    return cache, sharding.constrain_rows(rest["logits"], mesh), sharding.constrain_rows(rest["deltas"], mesh)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "greedy", "top_k", "use_top_p", "buf_len", "mesh", "total_rows"),
    donate_argnames=("cache",),
)
def _decode(
    graphdef,
    state,
    cache,
    logits,
    deltas,
    done,
    key,
    first_slot,
    max_new,
    eos_ids,
    temperature,
    top_p,
    pad_token_id,
    first_row=0,
    *,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
    buf_len: int,
    mesh,
    total_rows: int | None = None,
):
    """The decode loop. `logits` [N, V] predict the token for slot `first_slot`; rows with `done`
    True produce nothing. Loops while t < max_new and some row is not done. Step t's uniforms:
    rows first_row .. of a draw of total_rows (`sampling.row_uniforms`, key fold_in(key, t)).
    Returns tokens / logprobs [N, buf_len], lengths [N], finished [N] and the final cache.

    `cache` is donated and returned: with per-layer arrays (what `_prefill` gives) the loop updates
    the caller's buffers in place, so decoding holds one cache, not the input and a working copy."""
    model = nnx.merge(graphdef, state)
    N = logits.shape[0]
    toks = jnp.full((N, buf_len), pad_token_id, jnp.int32)
    lps = jnp.zeros((N, buf_len), jnp.float32)
    lengths = jnp.zeros((N,), jnp.int32)
    finished = jnp.zeros((N,), bool)

    def pick(t, logits, done, toks, lps, lengths, finished):
        tok, lp = sampling.next_tokens(
            jax.random.fold_in(key, t),
            logits,
            greedy=greedy,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            use_top_p=use_top_p,
            first_row=first_row,
            total_rows=total_rows,
        )
        tok = jnp.where(done, pad_token_id, tok)
        lp = jnp.where(done, 0.0, lp)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, t))
        lps = jax.lax.dynamic_update_slice(lps, lp[:, None], (0, t))
        lengths = lengths + (~done).astype(jnp.int32)
        hit = jnp.isin(tok, eos_ids) & ~done
        return tok, hit | done, toks, lps, lengths, finished | hit

    def cond(c):
        t, _, _, done, *_ = c
        return (t < max_new - 1) & ~jnp.all(done)

    def body(c):
        t, cache, logits, done, toks, lps, lengths, finished = c
        tok, done, toks, lps, lengths, finished = pick(t, logits, done, toks, lps, lengths, finished)
        slot = first_slot + t
        pos = model.text_position_ids((slot + deltas)[:, None])
        logits, cache = last_logits(model, tok[:, None], jnp.ones((N, 1), jnp.int32), pos, cache, slot)
        cache = constrain_cache(layout(cache), mesh)
        return t + 1, cache, sharding.constrain_rows(logits, mesh), done, toks, lps, lengths, finished

    # the layout of `cache` (per-layer tuples when the model takes them) for the whole loop
    cache = per_layer_cache(model, cache, N, first_slot)
    per_layer = isinstance(cache["k"], tuple)
    layout = _unstack_cache if per_layer else (lambda c: c)  # noqa: E731
    c = (jnp.int32(0), constrain_cache(cache, mesh), logits, done, toks, lps, lengths, finished)
    t, cache, logits, done, toks, lps, lengths, finished = jax.lax.while_loop(cond, body, c)
    # the last token needs no forward pass (nothing is sampled after it)
    _, _, toks, lps, lengths, finished = jax.lax.cond(
        t < max_new,
        lambda: pick(t, logits, done, toks, lps, lengths, finished),
        lambda: (toks[:, 0], done, toks, lps, lengths, finished),
    )
    return toks, lps, lengths, finished, cache


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _encode_same_size(graphdef, state, pixel_values, image_grid_thw):
    """n images of one grid: pixel_values [n, rows, ...] (each image's rows), image_grid_thw [n, 3]
    -> [n, tokens, H].

    With the model's `vision_chunk` (image rows), that many rows' images at a time (at least one;
    `jax.lax.map` in batches), so one batch's activations are live, not all n images'."""
    model = nnx.merge(graphdef, state)
    one = lambda a: model.encode_images(a[0], a[1][None])  # noqa: E731
    chunk = int(getattr(getattr(model, "config", None), "vision_chunk", 0) or 0)
    per_call = max(chunk // pixel_values.shape[1], 1) if chunk else pixel_values.shape[0]
    if per_call >= pixel_values.shape[0]:
        return jax.vmap(one)((pixel_values, image_grid_thw))
    return jax.lax.map(one, (pixel_values, image_grid_thw), batch_size=per_call)


def encode_images(model_split, pixel_values, image_grid_thw, *, layout, pad_to: int | None = None):
    """Image embeddings [n_image_tokens (or pad_to), hidden], images in the order of `image_grid_thw`.

    Each image attends only to itself, so images of the same grid are encoded together (vmap),
    one jitted call per distinct grid: the cost is linear in the number of images, not quadratic
    in the batch's total image rows. `layout`: the model's `image_layout` (each image's rows).
    Rows past the real tokens (`pad_to`) are zeros."""
    graphdef, state = model_split
    pv = np.asarray(pixel_values, np.float32)
    grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    n_patch = layout.rows_per_image(grid)
    if pv.shape[0] != n_patch.sum():
        raise ValueError(f"pixel_values has {pv.shape[0]} patches but image_grid_thw covers {int(n_patch.sum())}")
    starts = np.concatenate([[0], np.cumsum(n_patch)[:-1]])
    pieces = [None] * len(grid)
    for g in sorted({tuple(r) for r in grid.tolist()}):
        idx = [i for i in range(len(grid)) if tuple(grid[i]) == g]
        stack = np.stack([pv[starts[i] : starts[i] + n_patch[i]] for i in idx])
        n_pad = bucket_length(len(idx), minimum=1) - len(idx)  # bucket the image count: fewer compiles
        stack = np.concatenate([stack, np.repeat(stack[:1], n_pad, 0)])
        grids = np.concatenate([grid[idx], np.repeat(grid[idx][:1], n_pad, 0)])
        out = _encode_same_size(graphdef, state, stack, jnp.asarray(grids, jnp.int32))
        for j, i in enumerate(idx):
            pieces[i] = out[j]
    emb = jnp.concatenate(pieces, axis=0)
    if pad_to is not None and pad_to > emb.shape[0]:
        emb = jnp.pad(emb, ((0, pad_to - emb.shape[0]), (0, 0)))
    return emb


def prepare_prompts(batch: dict, *, pad_id: int = 0, bucket: bool = True):
    """Host-side: (input_ids, attention_mask) int32 [B, P'] left-padded to the bucketed length."""
    if "input_ids" not in batch:
        raise KeyError("batch needs 'input_ids' (left-padded [B, T])")
    ids = np.asarray(batch["input_ids"], np.int32)
    mask = np.asarray(batch.get("attention_mask", np.ones_like(ids)), np.int32)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} must be the same [B, T]")
    if (mask[:, -1] == 0).any():
        raise ValueError("prompts must be left-padded: attention_mask[:, -1] is 0 for some row")
    if bucket:
        width = bucket_length(ids.shape[1])
        ids, mask = _left_pad(ids, width, pad_id), _left_pad(mask, width, 0)
    return ids, mask


def decode(
    model_split,
    cache,
    logits,
    deltas,
    *,
    first_slot: int,
    max_new_tokens: int,
    buf_len: int,
    temperature,
    top_p,
    top_k,
    eos_token_id,
    rng,
    done=None,
    pad_token_id: int = 0,
    mesh=None,
    first_row: int = 0,
    total_rows: int | None = None,
):
    """Run the decode loop from a filled cache (see `_decode`; the cache is donated to it: do not
    use it afterwards); returns a GenerationOutput [N, max_new_tokens]. `first_row`, `total_rows`:
    these N rows are rows first_row .. of a sample of total_rows drawn in several calls (`generate`)."""
    graphdef, state = model_split
    N = logits.shape[0]
    total = N if total_rows is None else int(total_rows)
    if not 0 <= first_row <= total - N:
        raise ValueError(f"rows {first_row} .. {first_row + N - 1} do not lie in a sample of {total} rows")
    if total != N and not jax.config.jax_threefry_partitionable:
        raise ValueError(
            "sampling in parts needs jax_threefry_partitionable = True (jax's default): without it a "
            "row's random draw depends on the size of the draw"
        )
    greedy = float(temperature) == 0.0
    if rng is None:
        rng = jax.random.key(0)
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    if done is None:
        done = jnp.zeros((N,), bool)
    done = sharding.place_rows(done, mesh)
    toks, lps, lengths, finished, _ = _decode(  # the cache is donated: the caller's copy is gone
        graphdef,
        state,
        cache,
        logits,
        deltas,
        done,
        rng,
        jnp.int32(first_slot),
        jnp.int32(max_new_tokens),
        jnp.asarray(_eos_array(eos_token_id)),
        jnp.float32(1.0 if greedy else temperature),
        jnp.float32(top_p),
        jnp.int32(pad_token_id),
        jnp.int32(first_row),
        greedy=greedy,
        top_k=int(top_k or 0),
        use_top_p=(not greedy) and float(top_p) < 1.0,
        buf_len=buf_len,
        mesh=mesh,
        total_rows=total,
    )
    return GenerationOutput(toks[:, :max_new_tokens], lps[:, :max_new_tokens], lengths, finished)


def prefill(
    model_split, batch: dict, *, layout, cache_len_extra: int, num_samples: int = 1, mesh=None, pad_id: int = 0
):
    """Encode images once, prefill the bucketed prompts, repeat each prompt's cache num_samples times.
    `layout`: the model's `image_layout` (`models.contract.ImageLayout`).

    Returns (cache, last_logits [B*n, V], deltas [B*n], prompt_slots P')."""
    graphdef, state = model_split
    ids, mask = prepare_prompts(batch, pad_id=pad_id)
    image_embeds, grid = None, None
    if contract.has_images(batch):
        grid = np.asarray(batch["image_grid_thw"], np.int32).reshape(-1, 3)
        n_tok = int(layout.tokens_per_image(grid).sum())
        image_embeds = encode_images(
            model_split, batch["pixel_values"], grid, layout=layout, pad_to=bucket_length(n_tok)
        )
        grid = sharding.place_replicated(grid, mesh)
    cache, logits, deltas = _prefill(
        graphdef,
        state,
        sharding.place_rows(ids, mesh),
        sharding.place_rows(mask, mesh),
        image_embeds,
        grid,
        cache_len=ids.shape[1] + cache_len_extra,
        num_samples=num_samples,
        mesh=mesh,
    )
    return cache, logits, deltas, ids.shape[1]


def generate(
    model,
    batch: dict,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
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
    """Sample `num_samples` continuations of every prompt in `batch` with a KV cache.

    batch: processor-style dict: `input_ids` / `attention_mask` [B, T] LEFT-padded, optional
    `pixel_values` [N_patches, C*t*p*p] and `image_grid_thw` [n_images, 3] (images in row order).
    temperature 0.0 = greedy. `eos_token_id`: int, list of ints or None (never stop early).
    `rng`: a jax key or an int seed (default key 0). `first_row`, `total_rows`: the output rows are
    rows first_row .. of a sample of total_rows (default: this call's rows) sampled in several calls:
    row r's draws are those of row first_row + r in one call over all rows, so the calls sample what
    one call would (up to float rounding of the logits). `model_split`: optional (graphdef, state)
    from `nnx.split(model)`, to skip the split on every call in a hot loop.
    The model may be sharded over a mesh (`grlhfv_jax.sharding.shard_model`): prompts are then
    split over ('data', 'fsdp') and the cache's heads over 'tensor'.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    split = model_split if model_split is not None else nnx.split(model)
    mesh = model_mesh(split[1])
    buf_len = bucket_length(max_new_tokens)
    cache, logits, deltas, first_slot = prefill(
        split,
        batch,
        layout=model.image_layout,
        cache_len_extra=buf_len,
        num_samples=num_samples,
        mesh=mesh,
        pad_id=pad_token_id,
    )
    return decode(
        split,
        cache,
        logits,
        deltas,
        first_slot=first_slot,
        max_new_tokens=max_new_tokens,
        buf_len=buf_len,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        eos_token_id=eos_token_id,
        rng=rng,
        pad_token_id=pad_token_id,
        mesh=mesh,
        first_row=first_row,
        total_rows=total_rows,
    )


class EngineRollout:
    """The KV-cache sampler behind the `Rollout` protocol.

    Holds the model (a trainee is updated in place by its optimizer: every call samples from the
    current weights) and the token ids the sampler needs. `frozen=True` (a judge or reference that
    never changes) splits the model once instead of on every call."""

    def __init__(self, model, *, eos_token_id, pad_token_id: int = 0, frozen: bool = False):
        self.model = model
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self._split = nnx.split(model) if frozen else None

    @property
    def model_split(self):
        """`nnx.split(model)` made once when frozen, else None (split on every call)."""
        return self._split

    def generate(self, batch: dict, params) -> GenerationOutput:
        return generate(
            self.model,
            batch,
            max_new_tokens=int(params.max_new_tokens),
            temperature=float(params.temperature),
            top_p=float(params.top_p),
            top_k=int(params.top_k),
            eos_token_id=self.eos_token_id,
            num_samples=int(params.num_samples),
            rng=jax.random.key(int(params.seed)),
            pad_token_id=self.pad_token_id,
            model_split=self._split,
            first_row=int(params.first_row),
            total_rows=int(params.total_rows) or None,
        )
