"""Optimiser: AdamW, linear warm-up then cosine decay to 0, global-norm clipping (optax)."""

from __future__ import annotations

import math

import jax
import optax


def lr_schedule(
    learning_rate: float,
    total_steps: int,
    *,
    warmup_ratio: float = 0.03,
    warmup_steps: int | None = None,
    end_value: float = 0.0,
) -> optax.Schedule:
    """0 -> ``learning_rate`` linearly over the warm-up steps (``warmup_steps``, else
    ceil(warmup_ratio * total_steps)), then cosine to ``end_value`` at ``total_steps``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warm = int(math.ceil(warmup_ratio * total_steps)) if warmup_steps is None else int(warmup_steps)
    warm = min(max(warm, 0), total_steps - 1) if total_steps > 1 else 0
    if warm == 0:
        return optax.cosine_decay_schedule(
            learning_rate, total_steps, alpha=end_value / learning_rate if learning_rate else 0.0
        )
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warm, total_steps, end_value=end_value)


def stacked_layer_axes(path) -> int:
    """1 for a parameter stacked on a leading layer axis (a path ``... layers <name> ...``: the
    decoder layers of a model with ``scan_layers``, e.g. model.layers.self_attn.q_proj.kernel
    [L, in, out]; ``... blocks <name> ...``: the vision blocks with ``scan_vision``, e.g.
    visual.blocks.attn.qkv.kernel [depth, in, out]), 0 otherwise (``model.layers.3.self_attn...``,
    ``visual.blocks.3.attn...``: one layer / block of an nnx.List)."""
    names = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
    return int(any(a in ("layers", "blocks") and isinstance(b, str) for a, b in zip(names, names[1:])))


def decay_mask(params):
    """Weight decay on matrices only (ndim >= 2, not counting a stacked layer / block axis): not on
    biases or norm scales."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: getattr(p, "ndim", 0) - stacked_layer_axes(path) >= 2, params
    )


def make_optimizer(
    *,
    learning_rate: float = 1e-6,
    total_steps: int,
    warmup_ratio: float = 0.03,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    decay_all: bool = False,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule). One transformation update = one optimizer step; gradient
    accumulation happens in the train steps (micro-batches inside one jitted step)."""
    schedule = lr_schedule(learning_rate, total_steps, warmup_ratio=warmup_ratio, warmup_steps=warmup_steps)
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=None if decay_all else decay_mask)
    )
    return optax.chain(*parts), schedule
