"""The learner's loop: train state from a config section (AdamW, schedule, frozen parameters) and
the resumable train loop (checkpoints with the metrics gathered so far, non-finite loss stop).

Stages build a state with `make_train_state` / `make_rl_train_state`, give `train_loop` a batch
maker and a step function (a jitted step of `trainers.steps`, or `trainers.grpo.grpo_update` for
RL) and write their outputs; nothing here knows a stage.
"""

from __future__ import annotations

import signal
import threading
import time
import warnings

import jax
import numpy as np

from grlhfv_jax import sharding
from grlhfv_jax.config import sections


def make_train_state(model, opt_cfg, total_steps: int):
    """TrainState with AdamW + warm-up/cosine + clipping from a validated config section with the
    optimizer keys (config.sections.OPTIMIZER: `lr`, `warmup_ratio`, `weight_decay`, `max_grad_norm`,
    `freeze`)."""
    from grlhfv_jax.rl import optim
    from grlhfv_jax.trainers import steps

    tx, schedule = optim.make_optimizer(
        learning_rate=float(opt_cfg.lr),
        total_steps=max(int(total_steps), 1),
        warmup_ratio=float(opt_cfg.warmup_ratio),
        weight_decay=float(opt_cfg.weight_decay),
        max_grad_norm=float(opt_cfg.max_grad_norm),
    )
    frozen = tuple(opt_cfg.freeze or ())
    if frozen:
        check_freeze(model, frozen)
        tx = freeze_params(tx, frozen)
    state = steps.TrainState(model, tx, schedule, frozen_vision="visual" in frozen)
    mesh = sharding.model_mesh(model)
    if mesh is not None:  # optimizer state (incl. its step counter) on the model's mesh, as a restore puts it
        sharding.shard_model(state.optimizer, mesh)
    return state


def make_rl_train_state(model, sec):
    """TrainState for an RL stage: its schedule counts optimizer updates, `sec.mini_batches` per RL
    step, so the learning rate decays over all `sec.steps` RL steps."""
    return make_train_state(model, sec, int(sec.steps) * int(sec.mini_batches))


def _param_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _frozen(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def check_freeze(model, prefixes: tuple[str, ...]) -> None:
    """A ValueError naming each `freeze` prefix that names no parameter of `model` (a typo, or one
    layer / block of a model whose layers are stacked for a scan: scan_layers / scan_vision), which
    would otherwise train what was meant to stay fixed."""
    from flax import nnx

    names = [_param_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]]
    for p in prefixes:
        if not any(_frozen(n, (p,)) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(
                f"freeze: {p!r} names no parameter of the model (top-level names: {', '.join(tops)}; "
                "with scan_layers / scan_vision the layers / blocks are stacked, e.g. "
                "'visual.blocks', and are frozen together or not at all)"
            )


def freeze_params(tx, prefixes: tuple[str, ...]):
    """`tx` on every parameter except those whose path starts with one of `prefixes` (e.g.
    "visual": the vision tower, as VLM recipes that keep a pretrained ViT fixed), which get zero
    updates."""
    import optax

    def labels(params):
        def label(path, _):
            return "frozen" if _frozen(_param_name(path), prefixes) else "train"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def patch_unit(model) -> int:
    """Pixel rows of a batch are padded in units of this many rows (`processing.patch_bucket`): the
    model's own unit (`models.contract.VLModel.patch_unit`); 0: the family never pads them."""
    return int(model.patch_unit())


def micro_batch_images(model, batch: dict, micro_batches: int, group: int = 1) -> dict:
    """The host batch with its images split by micro-batch, for the steps of `trainers.steps` run
    with ``num_micro_batches = micro_batches`` (and ``group``): ``pixel_values [N, D]`` is replaced
    by ``micro_pixel_values [m, Nm, D]`` (micro-batch k: the patches of its rows' images, in row
    order, zero-padded to Nm = `processing.patch_bucket` of the largest, in `patch_unit`s) and
    ``micro_image_grid_thw [m, nm, 3]`` (zero rows pad); ``image_grid_thw`` is kept (positions).
    Where the model reads each run of `group` rows' images from its first row
    (`steps.images_per_group`), only those rows' images are kept. Each micro-batch then runs the
    vision tower on its own images: its memory is one micro-batch's, not the whole batch's.
    Unchanged when ``micro_batches`` <= 1, the batch has no (host numpy) images or the family's
    image rows are never split (`patch_unit` 0: the whole-batch layout).

    Several processes: `batch` holds this host's rows (block `process_index` of the global rows);
    a micro-batch is a block of global rows, so the micro-batch images are built from the global
    rows' ids and images, gathered host-side (`sharding.gather_batch`): the same arrays on every host,
    placed as they are (`sharding.GLOBAL_BATCH_KEYS`); the host's other entries stay its own."""
    from grlhfv_jax import processing
    from grlhfv_jax.trainers import steps

    m = int(micro_batches)
    pv, grid = batch.get("pixel_values"), batch.get("image_grid_thw")
    if m <= 1 or not isinstance(pv, np.ndarray) or grid is None or not patch_unit(model):
        return batch
    host = batch
    if jax.process_count() > 1:
        batch = sharding.gather_batch(batch, ("input_ids", "pixel_values", "image_grid_thw"))
        pv, grid = batch["pixel_values"], batch["image_grid_thw"]
    rows = np.asarray(batch["input_ids"]).shape[0]
    if rows % m:
        raise ValueError(f"{rows} rows do not split into num_micro_batches={m} equal micro-batches")
    grid = np.asarray(grid).reshape(-1, 3)
    per_row = model.image_layout.row_slices(batch)
    first_only = steps.images_per_group(model, group)
    parts = []
    for k in range(m):
        rs = [r for r in range(k * rows // m, (k + 1) * rows // m) if not first_only or r % group == 0]
        parts.append(([pv[per_row[r][0]] for r in rs], [grid[per_row[r][1]] for r in rs]))
    n_px = max(sum(len(x) for x in px) for px, _ in parts)
    n_img = max(max(sum(len(g) for g in gs) for _, gs in parts), 1)
    micro_pv = np.zeros((m, processing.patch_bucket(n_px, patch_unit(model))) + pv.shape[1:], pv.dtype)
    micro_grid = np.zeros((m, n_img, 3), grid.dtype)
    for k, (px, gs) in enumerate(parts):
        if px:
            x, g = np.concatenate(px), np.concatenate(gs)
            micro_pv[k, : len(x)], micro_grid[k, : len(g)] = x, g
    out = {k: v for k, v in host.items() if k != "pixel_values"}
    out["micro_pixel_values"], out["micro_image_grid_thw"] = micro_pv, micro_grid
    return out


def place_batch(model, batch: dict) -> dict:
    """A batch dict on the model's mesh: rows split over the data axes (`sharding.shard_batch`:
    each device holds its share of the rows, not a replica; per-host rows on multi-host runs
    come from the caller's `process_slice`), images replicated; non-arrays passed through. Rows
    that do not split evenly are replicated, with a warning. A model on one device gets plain
    device arrays. Host pixel rows (numpy `pixel_values`) are padded to `processing.patch_bucket`
    of `patch_unit(model)`: batches of images of other sizes then share a compiled step.

    Several processes (`jax.process_count() > 1`): `batch` holds this host's rows (the data
    sources give host p block p of each global batch's rows) and the result is the global batch
    (`sharding.global_batch`): the image entries are gathered host-side first, then padded as one
    process pads them, so every host, and a one-process run, place the same arrays."""
    from grlhfv_jax import processing

    mesh = sharding.model_mesh(model)
    parts = batch.get("parts")
    if jax.process_count() > 1 and isinstance(parts, (tuple, list)) and all(isinstance(p, dict) for p in parts):
        # a batch in parts of different widths (steps.sft_step): each part is this host's rows of its own
        return dict(batch, parts=tuple(place_batch(model, p) for p in parts))
    if jax.process_count() > 1 and mesh is not None:
        batch = sharding.gather_batch(batch, ("pixel_values", "image_grid_thw", "image_embeds"))
        pv = batch.get("pixel_values")
        if isinstance(pv, np.ndarray) and batch.get("image_grid_thw") is not None and patch_unit(model):
            batch = processing.pad_patches(batch, processing.patch_bucket(pv.shape[0], patch_unit(model)))
        return sharding.global_batch(batch, mesh, global_keys=sharding.REPLICATED_BATCH_KEYS)
    pv = batch.get("pixel_values")
    if isinstance(pv, np.ndarray) and batch.get("image_grid_thw") is not None and patch_unit(model):
        batch = processing.pad_patches(batch, processing.patch_bucket(pv.shape[0], patch_unit(model)))
    if mesh is not None and mesh.size > 1:
        n = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES if a in mesh.shape]))
        rows = {
            int(v.shape[0])
            for k, v in batch.items()
            if k not in sharding.REPLICATED_BATCH_KEYS and hasattr(v, "shape") and len(v.shape) > 0
        }
        if all(r % n == 0 for r in rows):
            return sharding.shard_batch(batch, mesh)
        warnings.warn(
            f"a batch of {sorted(rows)} rows does not split over the {n} data-parallel devices: it is "
            "replicated (every device computes all of it); make batch sizes multiples of "
            f"{n}",
            stacklevel=2,
        )
        return sharding.shard_batch(batch, mesh, replicated_keys=tuple(batch))
    return {k: jax.numpy.asarray(v) if hasattr(v, "shape") and hasattr(v, "dtype") else v for k, v in batch.items()}


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN/inf; the last good checkpoint is kept."""


class ResumeError(RuntimeError):
    """A stage's checkpoint cannot be restored; the message names the stage, the folder and the fix."""


# Exit status of a run stopped by SIGTERM / SIGINT after saving its checkpoint (EX_TEMPFAIL: try
# again; the same command resumes). `python -m grlhfv_jax.main` exits with it.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """SIGTERM / SIGINT arrived during stage `stage`; its checkpoint at `step` is saved."""

    def __init__(self, stage: str, step: int, signame: str):
        super().__init__(f"[{stage}] stopped by {signame} at step {step}")
        self.stage, self.step, self.signame = stage, step, signame


_stop = {"signal": None}  # the first SIGTERM / SIGINT seen by the handler
_installed: list = []  # [(signum, previous handler)] while `preemption_handlers` is active
_sync_calls = [0]  # calls of `stop_and_save_flags` in this process (the same on every host)


def _on_signal(signum, frame):
    name = signal.Signals(signum).name
    if _stop["signal"] is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
    if _stop["signal"] is None:
        print(
            f"[run] {name} received: saving a checkpoint at the next step boundary, then exiting "
            f"(status {PREEMPTED_EXIT_CODE})",
            flush=True,
        )
    _stop["signal"] = name


class preemption_handlers:
    """While active (a context manager; nested uses share the outer one), SIGTERM and SIGINT set a
    flag instead of killing the process: `train_loop` saves at its next step boundary and raises
    `Preempted`, and `main.run` stops between stages. Only in the main thread (signals are
    delivered there); elsewhere a no-op."""

    def __enter__(self):
        self._mine = not _installed and threading.current_thread() is threading.main_thread()
        if self._mine:
            _stop["signal"] = None
            for sig in (signal.SIGTERM, signal.SIGINT):
                _installed.append((sig, signal.signal(sig, _on_signal)))
        return self

    def __exit__(self, *exc):
        if self._mine:
            while _installed:
                sig, old = _installed.pop()
                signal.signal(sig, old)
        return False


def stop_requested() -> str | None:
    """The name of the signal that asked this process to stop (None: none)."""
    return _stop["signal"]


def stop_and_save_flags(stop: bool, due: bool) -> tuple[bool, bool]:
    """(stop, save) agreed by every process: each is True when it is on any host (a stop signal
    reaches the hosts at different steps; their clocks differ), so that all save the same step and
    stop together. One process: the flags as they are. Several: a tiny all-gather of the flags, and
    JAX's preemption sync point (the notice a cluster sends through `jax.distributed`; a counter of
    these calls, the same on every host, serves as its step)."""
    if jax.process_count() == 1:
        return stop, due
    from jax.experimental import multihost_utils

    _sync_calls[0] += 1
    try:
        stop = stop or bool(multihost_utils.reached_preemption_sync_point(_sync_calls[0]))
    except Exception:  # noqa: BLE001  (no preemption service: jax.distributed set up without one)
        pass
    flags = np.asarray(multihost_utils.process_allgather(np.array([stop, due], np.int32)))
    flags = flags.reshape(-1, 2).max(axis=0)
    return bool(flags[0]), bool(flags[1])


# The time-based checkpoint interval `main.run` sets for the stage it runs (its section's
# `ckpt_every_minutes`), used by `train_loop` calls that do not pass their own.
stage_defaults = {"ckpt_every_minutes": sections.CKPT_EVERY_MINUTES}


def train_loop(
    name: str,
    state,
    *,
    steps: int,
    make_batch,
    step_fn,
    writer,
    ckpt_dir: str,
    log_every: int = 10,
    ckpt_every: int = 50,
    on_log=None,
    ckpt_every_minutes: float | None = None,
    clock=time.monotonic,
) -> dict:
    """Runs `steps` updates, resuming from the newest checkpoint in `ckpt_dir`.

    make_batch(step) -> batch dict (deterministic in `step`, so a resumed run sees the same data;
    placed on the model's mesh by `place_batch`) or anything the step function takes;
    step_fn(state, batch) -> (state, metrics). Logs every `log_every` steps under stage `name`,
    checkpoints every `ckpt_every` steps, every `ckpt_every_minutes` minutes of `clock` (seconds;
    0: off; None: `stage_defaults`) and at the end. Each checkpoint also holds the last logged
    metrics and those gathered since, so a run resumed from any checkpoint (even the final one:
    then no step runs) returns exactly what an uninterrupted run returns. A non-finite loss stops
    the run with an error naming the step; the last checkpoint (before the bad step) is kept.
    SIGTERM / SIGINT (`preemption_handlers`) stop the loop at the next step boundary: it saves that
    step, prints one line naming the stage and step, and raises `Preempted`.
    Returns the last logged metrics (floats).
    """
    from grlhfv_jax.checkpoint import Checkpointer, UnrestorableCheckpointError
    from grlhfv_jax.metrics import progress

    minutes = stage_defaults["ckpt_every_minutes"] if ckpt_every_minutes is None else float(ckpt_every_minutes)
    ckpt = Checkpointer(ckpt_dir, max_to_keep=2)
    try:
        restored = ckpt.restore_latest(state.model, state.optimizer)
    except Exception as e:  # a corrupt or foreign checkpoint: say where and what to do, delete nothing
        ckpt.close()
        what = (
            "no checkpoint step in it can be restored"
            if isinstance(e, UnrestorableCheckpointError)
            else "its checkpoint cannot be restored"
        )
        raise ResumeError(
            f"[{name}] cannot resume from the checkpoint in {ckpt_dir}: {what}: {type(e).__name__}: {e}. "
            f"Delete {ckpt_dir} to redo this part of the stage from its start (finished stages are kept), "
            "or use --restart to redo the whole run."
        ) from e
    start, extra = restored if restored is not None else (0, {})
    if restored is not None:
        print(f"[{name}] resuming at step {start}/{steps} from {ckpt.directory}", flush=True)
    last: dict = dict(extra.get("last", {}))
    acc: dict[str, list] = {k: list(v) for k, v in extra.get("acc", {}).items()}
    last_save = [clock()]

    def save(step):
        ckpt.save(
            step,
            state.model,
            state.optimizer,
            extra={"last": last, "acc": {k: [float(x) for x in v] for k, v in acc.items()}},
        )
        last_save[0] = clock()

    bar = progress(range(start, steps), total=steps, desc=name, initial=start)
    # the loss of the last dispatched step, checked (a host sync) only once the next batch is built:
    # the host builds batch s + 1 while the device runs step s. Checked before the next step, a log
    # or a checkpoint, so a non-finite step is never followed by another step or saved.
    pending: list = []

    def check_pending():
        if pending:
            bad_step, loss = pending.pop()
            if not np.isfinite(float(loss)):
                ckpt.wait()
                raise NonFiniteLossError(
                    f"[{name}] non-finite loss ({float(loss)}) at step {bad_step + 1}; the last checkpoint "
                    f"({ckpt.latest_step()}) in {ckpt_dir} is kept. Lower the learning rate or check the data."
                )

    try:
        with preemption_handlers():
            for step in bar:
                batch = make_batch(step)
                if isinstance(batch, dict):
                    batch = place_batch(state.model, batch)
                check_pending()
                state, metrics = step_fn(state, batch)
                if "loss" in metrics:
                    pending.append((step, metrics["loss"]))
                for k, v in metrics.items():
                    acc.setdefault(k, []).append(v)
                if (step + 1) % log_every == 0 or step + 1 == steps:
                    check_pending()
                    last = {k: float(np.mean([float(x) for x in v])) for k, v in acc.items()}
                    acc = {}
                    if on_log is not None:
                        last.update(on_log(step + 1) or {})
                    writer.write(name, step + 1, last)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in list(last.items())[:4]})
                if step + 1 == steps:
                    break  # the final checkpoint below; a stop signal is handled between stages
                saved = (step + 1) % ckpt_every == 0
                if saved:
                    check_pending()
                    save(step + 1)
                stop, due = stop_and_save_flags(
                    stop_requested() is not None, minutes > 0 and clock() - last_save[0] >= 60 * minutes
                )
                if (stop or due) and not saved:
                    check_pending()
                    save(step + 1)
                if stop:
                    ckpt.wait()
                    how = stop_requested() or "a stop on another host"
                    bar.close()
                    print(
                        f"[{name}] preempted ({how}): checkpoint of step {step + 1}/{steps} saved in "
                        f"{ckpt.directory}; run the same command again to resume",
                        flush=True,
                    )
                    raise Preempted(name, step + 1, how)
        check_pending()
        if start < steps:  # resumed from the final checkpoint: it is already there
            save(steps)
    finally:
        bar.close()
        ckpt.close()  # waits for an in-flight save: a crash never leaves half a checkpoint behind
    return last
