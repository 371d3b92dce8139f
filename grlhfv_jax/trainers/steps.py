"""Train state and jitted train steps (GRPO, Bradley-Terry RM, DPO, SFT) for any model that follows
docs/internal_api.md (``model(input_ids, attention_mask, position_ids=, image_embeds=,
return_hidden=)``, ``model.logits(hidden)``, ``model.rope_index`` -> positions ``[..., B, T]``
(M-RoPE ``[3, B, T]`` or 1-D ``[B, T]``); with images ``model.encode_images`` and
``model.image_token_mask``; for BT RMs ``model.score(..., position_ids=, image_embeds=)``).

One call = one optimizer update on one mini-batch (the train state is donated: its old buffers are
reused for the new one, so params and optimizer state are not held twice at peak), accumulated over
``num_micro_batches`` equal slices of its rows (a `jax.lax.scan`, so memory is that of one
micro-batch). Images, two layouts: with ``pixel_values [N, D]`` the vision tower runs once on the
whole mini-batch; each micro-batch reads its own slice of the image embeddings, and the embeddings'
gradients go back through the tower once at the end (`jax.vjp`). With the images split by
micro-batch on the host (``micro_pixel_values [m, Nm, D]``, ``micro_image_grid_thw [m, nm, 3]``:
`trainers.loop.micro_batch_images`, what the trainers pass) each micro-batch runs the tower on its
own images, forward and backward, so the tower's memory is that of one micro-batch's images too.
Both give the update without micro-batching. Positions (M-RoPE) come from ``model.rope_index``
on the whole mini-batch (``image_grid_thw [n, 3]``: every row's images, in both layouts).

Batches (dicts of arrays, leading dim = rows; right padding usual, any padding works):
- common: ``input_ids [B, T] int``, ``attention_mask [B, T]``, optional ``pixel_values [N, D]``
  and ``image_grid_thw [n, 3]`` (images in row order, as `processing.collate` gives them).
- GRPO: ``response_mask [B, T]`` (1 on response tokens, aligned with input_ids),
  ``old_logp``, ``ref_logp [B, T]`` (from `compute_logprobs`), ``advantages [B]`` or ``[B, T]``.
- BT RM, DPO: rows interleaved as pairs: row 2k = chosen, row 2k+1 = rejected (so micro-batches
  hold whole pairs); DPO adds ``loss_mask [B, T]`` and ``ref_logps [B]`` (sequence sums, or
  means for IPO, from `compute_sequence_logprobs` with the reference model).
- SFT: ``loss_mask [B, T]`` marks target tokens (aligned with input_ids).
- ``window`` (static, GRPO / SFT / `compute_logprobs`): when > 0 the LM head runs only on the
  target columns ``window_start[b] + [0, window)`` (``window_start [B] int`` in the batch; from
  `logprobs.window_start_and_length` or the prompt width), not on all T: the same loss when the
  window covers every target (the caller's duty; outputs stay ``[B, T]``, 0 off the window).
- ``group`` (static, GRPO / `compute_logprobs`, with ``window``): the rows come in runs of
  ``group`` that share their first ``T - window`` columns (a prompt and its sampled responses,
  ``window_start = T - window`` in every row), and a model that declares the capability
  ``model.shared_prompt`` (`models.contract.VLModel`) runs each prompt once per run
  (``model.shared_prompt_hidden``): the same loss with G times fewer prompt tokens; with
  ``model.group_images`` (``model.group_first_images``) the vision tower also encodes each run's
  images once (the first row's; the others are copies); other models run the full forward (the
  same loss). Micro-batches must hold whole runs.
- The LM head runs in ``model.config.logits_chunk`` columns at a time when set
  (`rl.logprobs.head_token_stats`): the same values, rows x chunk x vocab float32 logits live.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from grlhfv_jax.config import sections
from grlhfv_jax.rl import bt_rm, dpo, grpo, sft
from grlhfv_jax.rl.logprobs import (
    gather_columns,
    head_token_stats,
    scatter_columns,
    sequence_logprob,
    window_columns,
)


class TrainState(nnx.Module):
    """The model being trained and its optimizer (``nnx.Optimizer(model, tx, wrt=nnx.Param)``).
    ``schedule`` (optional, static) lets the steps report the learning rate."""

    def __init__(
        self,
        model: nnx.Module,
        tx: optax.GradientTransformation,
        schedule: Callable | None = None,
        frozen_vision: bool = False,
    ):
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        self.schedule = schedule
        # the caller's `tx` gives the vision tower zero updates: the steps skip its backward pass
        # (its gradients are reported as 0, the update is the same)
        self.frozen_vision = bool(frozen_vision)


def _default(section: dict, key: str):
    """A field defaulting to the schema's default of `section[key]` (config.sections: the only copy)."""
    return dataclasses.field(default=section[key].default)


class _FromSection:
    """`from_section(sec)`: the settings of a validated config section, one field per key of the
    schema section `SECTION` that the dataclass has."""

    SECTION: ClassVar[dict] = {}

    @classmethod
    def from_section(cls, sec):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: sec[k] for k in cls.SECTION if k in names})


@dataclasses.dataclass(frozen=True)
class GRPOConfig(_FromSection):
    """Static GRPO settings; the names pick entries of the `grpo` registries (the step reads
    ``policy_loss``, ``kl_estimator`` and ``loss_agg_mode``; ``advantage_estimator`` is for the
    caller that turns rewards into advantages, `trainers.grpo.grpo_update`). A run builds it from
    its RL section (`from_section`); the defaults are the schema's (config.sections.GRPO), and for
    clip_eps and kl_coef, which a config must set, `rl.grpo.policy_loss`'s (direct callers)."""

    SECTION: ClassVar[dict] = sections.GRPO
    clip_eps: float = 0.2
    clip_eps_high: float | None = _default(sections.GRPO, "clip_eps_high")  # asymmetric clip (DAPO)
    clip_ratio_c: float | None = _default(sections.GRPO, "clip_ratio_c")  # dual clip (verl uses 3.0)
    kl_coef: float = 0.02
    kl_estimator: str = _default(sections.GRPO, "kl_estimator")
    entropy_coef: float = _default(sections.GRPO, "entropy_coef")
    loss_agg_mode: str = _default(sections.GRPO, "loss_agg_mode")
    temperature: float = 1.0  # of the sampled log-probs (not a config key)
    compute_entropy: bool = True
    num_micro_batches: int = _default(sections.GRPO, "num_micro_batches")
    advantage_estimator: str = _default(sections.GRPO, "advantage_estimator")
    policy_loss: str = _default(sections.GRPO, "policy_loss")
    # the reference log-prob pass of a GRPO step in this many slices (trainers.grpo)
    ref_num_micro_batches: int = _default(sections.GRPO, "ref_num_micro_batches")


def grpo_loss(cfg: GRPOConfig, logp, old_logp, ref_logp, advantages, mask, entropy=None, denominator=None):
    """The policy loss ``cfg.policy_loss`` (from `grpo.POLICY_LOSSES`) with ``cfg``'s settings:
    (scalar loss, metrics), as `grpo.policy_loss` documents."""
    if cfg.policy_loss not in grpo.POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {cfg.policy_loss!r}; registered: {sorted(grpo.POLICY_LOSSES)}")
    return grpo.POLICY_LOSSES[cfg.policy_loss](
        logp,
        old_logp,
        ref_logp,
        advantages,
        mask,
        clip_eps=cfg.clip_eps,
        kl_coef=cfg.kl_coef,
        clip_eps_high=cfg.clip_eps_high,
        clip_ratio_c=cfg.clip_ratio_c,
        entropy=entropy,
        entropy_coef=cfg.entropy_coef,
        kl_estimator=cfg.kl_estimator,
        loss_agg_mode=cfg.loss_agg_mode,
        denominator=denominator,
    )


@dataclasses.dataclass(frozen=True)
class BTConfig(_FromSection):
    """The Bradley-Terry RM step (config.sections.RM; reg, which a config must set: 0.001 here)."""

    SECTION: ClassVar[dict] = sections.RM
    reg: float = 0.001
    num_micro_batches: int = _default(sections.RM, "num_micro_batches")


@dataclasses.dataclass(frozen=True)
class DPOConfig(_FromSection):
    """The DPO step (config.sections.DPO; beta, which a config must set: 0.1 here)."""

    SECTION: ClassVar[dict] = sections.DPO
    beta: float = 0.1
    loss_type: str = _default(sections.DPO, "loss_type")
    label_smoothing: float = _default(sections.DPO, "label_smoothing")
    num_micro_batches: int = _default(sections.DPO, "num_micro_batches")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    num_micro_batches: int = 1  # not a config key: the SFT stage steps whole batches


# ------------------------------------------------------------------------- micro-batch engine

# images split by micro-batch on the host (`trainers.loop.micro_batch_images`): [m, Nm, D], [m, nm, 3]
MICRO_IMAGE_KEYS = ("micro_pixel_values", "micro_image_grid_thw")
_ROW_KEYS_SKIP = ("pixel_values", "image_grid_thw", "image_embeds", "position_ids") + MICRO_IMAGE_KEYS


def _split_rows(batch: dict, m: int, rows: int) -> dict:
    """Every per-row entry [rows, ...] -> [m, rows/m, ...]; other entries are left out."""
    out = {}
    for k, v in batch.items():
        if k in _ROW_KEYS_SKIP or v is None or not hasattr(v, "shape") or jnp.ndim(v) == 0:
            continue
        if jnp.shape(v)[0] != rows:
            continue
        v = jnp.asarray(v)
        out[k] = v.reshape((m, rows // m) + v.shape[1:])
    return out


def _require(batch: dict, keys, step: str) -> None:
    missing = [k for k in keys if batch.get(k) is None]
    if missing:
        raise KeyError(f"{step}: batch lacks {missing} (has {sorted(k for k, v in batch.items() if v is not None)})")


def _has_images(batch) -> bool:
    return batch.get("pixel_values") is not None


def _micro_images(batch) -> bool:
    """Whether the batch carries its images split by micro-batch (`MICRO_IMAGE_KEYS`)."""
    return batch.get("micro_pixel_values") is not None


def images_per_group(model, group: int) -> bool:
    """Whether `model` reads one run of `group` rows' images from the run's first row only (rows
    that share their prompt: `model.group_first_images`, `shared_prompt_hidden(group_images=True)`)."""
    return group > 1 and model.group_images and model.shared_prompt


def _per_group(model, batch, group: int) -> bool:
    """Whether the images are encoded once per run of `group` rows (rows that share their prompt,
    `model.group_first_images`) instead of once per row."""
    return _has_images(batch) and images_per_group(model, group)  # the only reader of per-group embeddings


def _images(model, batch, group: int = 1):
    """(pixel_values, image_grid_thw) the vision tower encodes: every row's, or with `_per_group` the
    first row's of each run of `group` (the others repeat its prompt: G times fewer patches)."""
    pv, grid = jnp.asarray(batch["pixel_values"]), jnp.asarray(batch["image_grid_thw"])
    if _per_group(model, batch, group):
        return model.group_first_images(batch["input_ids"], pv, grid, group)
    return pv, grid


def _plan(model, batch, m: int, group: int = 1):
    """Micro-batches with position_ids and image offsets (into the embeddings of `_images`), or
    with the batch's `MICRO_IMAGE_KEYS` each micro-batch's own images (``pixel_values``,
    ``image_grid_thw``)."""
    ids = jnp.asarray(batch["input_ids"])
    b, t = ids.shape
    if b % m:
        raise ValueError(f"{b} rows do not split into num_micro_batches={m} equal micro-batches")
    if group > 1 and (b // m) % group:
        raise ValueError(f"a micro-batch of {b // m} rows does not hold whole groups of {group}")
    am = batch.get("attention_mask")
    am = jnp.ones((b, t), jnp.int32) if am is None else jnp.asarray(am)
    grid = batch.get("image_grid_thw") if _has_images(batch) or _micro_images(batch) else None
    pos, _ = model.rope_index(ids, am, None if grid is None else jnp.asarray(grid))
    mbs = _split_rows(dict(batch, attention_mask=am), m, b)
    # positions [..., B, T] (M-RoPE: [3, B, T]; 1-D: [B, T]): the row axis split into micro-batches
    pos = pos.reshape(pos.shape[:-2] + (m, b // m, t))
    mbs["position_ids"] = jnp.moveaxis(pos, -3, 0)
    if _micro_images(batch):
        pv, mgrid = jnp.asarray(batch["micro_pixel_values"]), jnp.asarray(batch["micro_image_grid_thw"])
        if pv.shape[0] != m or mgrid.shape[0] != m:
            raise ValueError(
                f"the batch's images are split into {pv.shape[0]} micro-batches "
                f"(trainers.loop.micro_batch_images), the step into num_micro_batches={m}"
            )
        mbs["pixel_values"], mbs["image_grid_thw"] = pv, mgrid
    elif grid is not None:
        tokens = jnp.sum(model.image_token_mask(ids), axis=1)
        if _per_group(model, batch, group):  # only each run's first row has its images encoded
            tokens = jnp.where(jnp.arange(b) % group == 0, tokens, 0)
        counts = tokens.reshape(m, b // m).sum(1)
        mbs["image_offset"] = (jnp.cumsum(counts) - counts).astype(jnp.int32)
    return mbs


def _micro_embeds(padded, mb, n):
    return None if padded is None else jax.lax.dynamic_slice_in_dim(padded, mb["image_offset"], n, axis=0)


def _accumulate_grads(model, batch, m: int, micro_loss, vision_grads: bool = True, group: int = 1):
    """Sum over micro-batches of grad(micro_loss) w.r.t. the model's nnx.Params.

    micro_loss(model, mb, image_embeds) -> (loss, metrics); the caller scales it so the sum over
    micro-batches is the mini-batch loss. vision_grads=False: the image embeddings are constants
    (a frozen tower: no backward pass through it; its gradients are 0). group: rows share their
    prompt in runs of `group` (`_images`: the tower encodes each prompt's images once).
    Returns (loss, grads State, summed metrics)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    mbs = _plan(model, batch, m, group)

    def f(p, mb, emb):
        return micro_loss(nnx.merge(graphdef, p, rest), mb, emb)

    zeros = jax.tree.map(jnp.zeros_like, params)
    if _micro_images(batch):  # each micro-batch runs the tower over its own images, forward and backward

        def f_images(p, mb):
            mdl = nnx.merge(graphdef, p, rest)
            emb = mdl.encode_images(mb["pixel_values"], mb["image_grid_thw"])
            return micro_loss(mdl, mb, emb if vision_grads else jax.lax.stop_gradient(emb))

        def body(g_acc, mb):
            (loss, met), g = jax.value_and_grad(f_images, has_aux=True)(params, mb)
            return jax.tree.map(jnp.add, g_acc, g), (loss, met)

        grads, (losses, mets) = jax.lax.scan(body, zeros, mbs)
    elif _has_images(batch) and not vision_grads:
        embeds = jax.lax.stop_gradient(model.encode_images(*_images(model, batch, group)))
        n = embeds.shape[0]
        padded = jnp.concatenate([embeds, jnp.zeros_like(embeds)], axis=0)

        def body(g_acc, mb):
            (loss, met), g = jax.value_and_grad(f, has_aux=True)(params, mb, _micro_embeds(padded, mb, n))
            return jax.tree.map(jnp.add, g_acc, g), (loss, met)

        grads, (losses, mets) = jax.lax.scan(body, zeros, mbs)
    elif _has_images(batch):
        pv, grid = _images(model, batch, group)
        embeds, enc_vjp = jax.vjp(lambda p: nnx.merge(graphdef, p, rest).encode_images(pv, grid), params)
        n = embeds.shape[0]
        padded = jnp.concatenate([embeds, jnp.zeros_like(embeds)], axis=0)

        def body(carry, mb):
            g_acc, d_emb = carry
            emb = _micro_embeds(padded, mb, n)
            (loss, met), (g, ge) = jax.value_and_grad(f, argnums=(0, 2), has_aux=True)(params, mb, emb)
            off = mb["image_offset"]
            d_emb = jax.lax.dynamic_update_slice_in_dim(
                d_emb, jax.lax.dynamic_slice_in_dim(d_emb, off, n, axis=0) + ge, off, axis=0
            )
            return (jax.tree.map(jnp.add, g_acc, g), d_emb), (loss, met)

        (grads, d_emb), (losses, mets) = jax.lax.scan(body, (zeros, jnp.zeros_like(padded)), mbs)
        (g_vis,) = enc_vjp(d_emb[:n].astype(embeds.dtype))
        grads = jax.tree.map(jnp.add, grads, g_vis)
    else:

        def body(g_acc, mb):
            (loss, met), g = jax.value_and_grad(f, has_aux=True)(params, mb, None)
            return jax.tree.map(jnp.add, g_acc, g), (loss, met)

        grads, (losses, mets) = jax.lax.scan(body, zeros, mbs)
    return jnp.sum(losses), grads, jax.tree.map(lambda x: jnp.sum(x, axis=0), mets)


def _forward_micro(model, batch, m: int, fn, group: int = 1):
    """fn(model, mb, image_embeds) -> pytree with leading dim B/m, for each micro-batch (no grad);
    returns it with the micro-batches joined back into [B, ...]. group: as `_accumulate_grads`."""
    mbs = _plan(model, batch, m, group)
    padded, n = None, 0
    if _has_images(batch):
        embeds = model.encode_images(*_images(model, batch, group))
        n = embeds.shape[0]
        padded = jnp.concatenate([embeds, jnp.zeros_like(embeds)], axis=0)
    graphdef, state = nnx.split(model)

    def body(_, mb):
        mdl = nnx.merge(graphdef, state)
        if _micro_images(batch):  # this micro-batch's own images
            return None, fn(mdl, mb, mdl.encode_images(mb["pixel_values"], mb["image_grid_thw"]))
        return None, fn(mdl, mb, _micro_embeds(padded, mb, n))

    _, out = jax.lax.scan(body, None, mbs)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)


def _forward(model, mb, emb, **kw):
    return model(mb["input_ids"], mb["attention_mask"], position_ids=mb["position_ids"], image_embeds=emb, **kw)


def _logits_chunk(model) -> int:
    """Columns per piece of the LM head in the losses (``model.config.logits_chunk``; 0: all at once)."""
    return int(getattr(getattr(model, "config", None), "logits_chunk", 0) or 0)


def _window_hidden(model, mb, emb, window: int, group: int = 1):
    """(final hidden states [B, window, H] whose logits predict the target columns, those columns
    [B, window], valid). group > 1: the rows share their first T - window columns in runs of
    `group` (module docstring) and the model runs those once per run (``model.shared_prompt_hidden``)."""
    T = mb["input_ids"].shape[1]
    cols, valid = window_columns(mb["window_start"], window, T)
    if group > 1 and model.shared_prompt:  # else: the same, by the full forward
        b = mb["input_ids"].shape[0]
        if b % group:
            raise ValueError(f"a micro-batch of {b} rows does not hold whole groups of {group}")
        kw = dict(group_images=True) if emb is not None and model.group_images else {}
        h = model.shared_prompt_hidden(
            mb["input_ids"],
            mb["attention_mask"],
            group=group,
            prompt_len=T - window,
            position_ids=mb["position_ids"],
            image_embeds=emb,
            **kw,
        )
        return h, cols, valid
    h = _forward(model, mb, emb, return_hidden=True)
    return gather_columns(h, cols - 1), cols, valid


def _head_stats(model, h, targets, temperature: float = 1.0, **kw) -> dict:
    """`head_token_stats` with the model's LM head, in ``model.config.logits_chunk`` columns."""
    return head_token_stats(model.logits, h, targets, temperature, _logits_chunk(model), **kw)


def _aligned(model, mb, emb, window: int, temperature: float, entropy: bool, group: int = 1):
    """Aligned log-probs [B, T] (and entropy [B, T] or None), from every column or a window."""
    ids = mb["input_ids"]
    if not window:
        h = _forward(model, mb, emb, return_hidden=True)
        st = _head_stats(model, h[:, :-1], ids[:, 1:], temperature, entropy=entropy)
        shift = lambda x: jnp.pad(x, ((0, 0), (1, 0)))  # noqa: E731  (as `aligned_logprobs`)
        return shift(st["logp"]), shift(st["entropy"]) if entropy else None
    h, cols, valid = _window_hidden(model, mb, emb, window, group)
    st = _head_stats(model, h, gather_columns(ids, cols), temperature, entropy=entropy)
    T = ids.shape[1]
    lp = scatter_columns(st["logp"], cols, valid, T)
    return lp, scatter_columns(st["entropy"], cols, valid, T) if entropy else None


def _apply(state: TrainState, grads, metrics: dict) -> dict:
    metrics = dict(metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    if state.schedule is not None:
        metrics["lr"] = jnp.asarray(state.schedule(state.optimizer.step[...]), jnp.float32)
    state.optimizer.update(state.model, grads)
    return metrics


# ------------------------------------------------------------------------------------- GRPO


def _check_group(window: int, group: int) -> None:
    if group > 1 and not window:
        raise ValueError("group > 1 (rows sharing a prompt) needs window = the response width")


@functools.partial(nnx.jit, static_argnames=("cfg", "window", "group"), donate_argnums=0)
def grpo_step(state: TrainState, batch: dict, cfg: GRPOConfig = GRPOConfig(), window: int = 0, group: int = 1):
    """One GRPO update. Returns (state, metrics): loss, pg_loss, kl, entropy, clip_frac,
    clip_frac_lower, ppo_kl, approx_kl, ratio_mean, grad_norm, lr, response_length_mean.
    ``window``: logits only on the response columns; ``group``: rows share their prompt in runs
    of ``group`` (module docstring)."""
    _check_group(window, group)
    _require(
        batch,
        ("input_ids", "response_mask", "old_logp", "ref_logp", "advantages") + (("window_start",) if window else ()),
        "grpo_step",
    )
    mask = jnp.asarray(batch["response_mask"], jnp.float32)
    b = mask.shape[0]
    denom = jnp.sum(mask) if cfg.loss_agg_mode == "token-mean" else jnp.float32(b)

    def micro_loss(model, mb, emb):
        logp, ent = _aligned(model, mb, emb, window, cfg.temperature, cfg.compute_entropy, group)
        if ent is not None and cfg.entropy_coef == 0.0:
            ent = jax.lax.stop_gradient(ent)
        return grpo_loss(
            cfg,
            logp,
            mb["old_logp"],
            mb["ref_logp"],
            mb["advantages"],
            mb["response_mask"],
            entropy=ent,
            denominator=denom,
        )

    _, grads, metrics = _accumulate_grads(
        state.model, batch, cfg.num_micro_batches, micro_loss, vision_grads=not state.frozen_vision, group=group
    )
    metrics["response_length_mean"] = jnp.mean(jnp.sum(mask, axis=1))
    return state, _apply(state, grads, metrics)


@functools.partial(nnx.jit, static_argnames=("temperature", "num_micro_batches", "with_entropy", "window", "group"))
def compute_logprobs(
    model,
    batch: dict,
    temperature: float = 1.0,
    num_micro_batches: int = 1,
    with_entropy: bool = False,
    window: int = 0,
    group: int = 1,
):
    """Aligned per-token log-probs ``[B, T]`` (``out[:, t]`` scores ``input_ids[:, t]``; column 0
    is 0), for old (policy) and ref (frozen reference) log-probs; with ``with_entropy`` also the
    per-token entropy ``[B, T]``. ``window``: only on those columns (module docstring), 0 elsewhere;
    ``group``: rows share their prompt in runs of ``group`` (module docstring)."""
    _check_group(window, group)

    def fn(model, mb, emb):
        lp, ent = _aligned(model, mb, emb, window, temperature, with_entropy, group)
        return (lp, ent) if with_entropy else lp

    return _forward_micro(model, batch, num_micro_batches, fn, group)


@functools.partial(nnx.jit, static_argnames=("average", "num_micro_batches"))
def compute_sequence_logprobs(model, batch: dict, average: bool = False, num_micro_batches: int = 1):
    """Sum (``average``: mean) of log-probs over ``loss_mask`` per row ``[B]`` (DPO references)."""

    def fn(model, mb, emb):
        lp, _ = _aligned(model, mb, emb, 0, 1.0, False)
        return sequence_logprob(lp, mb["loss_mask"], average=average)

    return _forward_micro(model, batch, num_micro_batches, fn)


# --------------------------------------------------------------------------- BT RM, DPO, SFT


def _scores(model, mb, emb):
    """Scalar head at the last real token of each row: [rows] float32."""
    return model.score(mb["input_ids"], mb["attention_mask"], position_ids=mb["position_ids"], image_embeds=emb)


def _check_pairs(batch, m):
    b = jnp.shape(batch["input_ids"])[0]
    if b % (2 * m):
        raise ValueError(f"{b} rows must be pairs (chosen, rejected) split evenly into {m} micro-batches")


@functools.partial(nnx.jit, static_argnames=("cfg",), donate_argnums=0)
def bt_rm_step(state: TrainState, batch: dict, cfg: BTConfig = BTConfig()):
    """One Bradley-Terry reward-model update on interleaved (chosen, rejected) rows."""
    m = cfg.num_micro_batches
    _require(batch, ("input_ids",), "bt_rm_step")
    _check_pairs(batch, m)

    def micro_loss(model, mb, emb):
        r = _scores(model, mb, emb).reshape(-1, 2)
        loss, met = bt_rm.bt_loss(r[:, 0], r[:, 1], reg=cfg.reg)
        return loss / m, jax.tree.map(lambda x: x / m, met)

    _, grads, metrics = _accumulate_grads(state.model, batch, m, micro_loss, vision_grads=not state.frozen_vision)
    return state, _apply(state, grads, metrics)


@functools.partial(nnx.jit, static_argnames=("cfg",), donate_argnums=0)
def dpo_step(state: TrainState, batch: dict, cfg: DPOConfig = DPOConfig()):
    """One DPO update on interleaved (chosen, rejected) rows with precomputed ``ref_logps``."""
    m = cfg.num_micro_batches
    _require(batch, ("input_ids", "loss_mask", "ref_logps"), "dpo_step")
    _check_pairs(batch, m)

    def micro_loss(model, mb, emb):
        lp, _ = _aligned(model, mb, emb, 0, 1.0, False)
        seq = sequence_logprob(lp, mb["loss_mask"], average=cfg.loss_type == "ipo").reshape(-1, 2)
        ref = mb["ref_logps"].reshape(-1, 2)
        loss, met = dpo.dpo_loss(
            seq[:, 0],
            seq[:, 1],
            ref[:, 0],
            ref[:, 1],
            beta=cfg.beta,
            loss_type=cfg.loss_type,
            label_smoothing=cfg.label_smoothing,
        )
        return loss / m, jax.tree.map(lambda x: x / m, met)

    _, grads, metrics = _accumulate_grads(state.model, batch, m, micro_loss, vision_grads=not state.frozen_vision)
    return state, _apply(state, grads, metrics)


@functools.partial(nnx.jit, static_argnames=("cfg", "window"), donate_argnums=0)
def sft_step(state: TrainState, batch, cfg: SFTConfig = SFTConfig(), window=0):
    """One SFT update: token-mean next-token loss over ``loss_mask`` of the whole mini-batch.
    ``window``: logits only on the target columns (module docstring).

    ``batch`` may also be a tuple of parts of different widths (rows of one width each, e.g. long
    judgments and short answers) with ``window`` a tuple of one window per part: the loss and its
    gradient are those of the parts' rows in one batch (one token count over all parts), without
    padding the short rows to the long ones."""
    parts = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    windows = tuple(window) if isinstance(window, (tuple, list)) else (window,) * len(parts)
    if len(windows) != len(parts):
        raise ValueError(f"sft_step: {len(parts)} batch parts but {len(windows)} windows")
    for part, w in zip(parts, windows):
        _require(part, ("input_ids", "loss_mask") + (("window_start",) if w else ()), "sft_step")
    denom = sum(jnp.sum(jnp.asarray(p["loss_mask"], jnp.float32)[:, 1:]) for p in parts)

    def micro_loss(w):
        def loss_fn(model, mb, emb):
            if w:
                h, cols, valid = _window_hidden(model, mb, emb, w)
                targets, mask = gather_columns(mb["input_ids"], cols), gather_columns(mb["loss_mask"], cols) * valid
            else:
                h = _forward(model, mb, emb, return_hidden=True)[:, :-1]
                targets, mask = mb["input_ids"][:, 1:], mb["loss_mask"][:, 1:]
            st = _head_stats(model, h, targets, argmax=True)
            loss, met = sft.token_loss(st["logp"], st["argmax_hit"], mask, denominator=denom)
            return loss, {"loss": met["loss"], "accuracy": met["accuracy"]}

        return loss_fn

    grads = metrics = None
    for part, w in zip(parts, windows):  # unrolled: each part has its own shapes
        _, g, met = _accumulate_grads(
            state.model, part, cfg.num_micro_batches, micro_loss(w), vision_grads=not state.frozen_vision
        )
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        metrics = met if metrics is None else jax.tree.map(jnp.add, metrics, met)
    metrics["num_tokens"] = denom
    return state, _apply(state, grads, metrics)
