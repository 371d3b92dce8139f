"""Training checkpoints (Orbax: async, keep-N, atomic, resume) and Hugging Face export.

A checkpoint holds the model's parameters, the optimizer state and a small JSON `extra` dict
(step counters, data position, rng seeds). Orbax writes each step into a temporary folder and
renames it when complete, so a crash or a full disk mid-save leaves the previous checkpoint
intact; `restore_latest` only ever sees finished steps, and skips (with a warning) a finished step
that cannot be read back for the newest one that can.

The directory may be a bucket (`gs://...`; Orbax writes it through tensorstore), or a folder in the
local mirror of a remote workdir, which `storage.durable` maps to the bucket.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

log = logging.getLogger(__name__)


def _train_state(model: nnx.Module, optimizer: nnx.Optimizer | None) -> dict:
    state = {"model": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
    if optimizer is not None:
        state["opt"] = nnx.to_pure_dict(nnx.state(optimizer, nnx.optimizer.OptState))  # incl. step
    return state


class UnrestorableCheckpointError(RuntimeError):
    """Every finished step of a checkpoint folder failed to restore; nothing was deleted."""


class Checkpointer:
    """Saves and restores (model, optimizer, extra) under `directory/<step>/`.

    Args:
        directory: where the steps go (created): a local folder or a bucket URL (`gs://...`).
        max_to_keep: finished checkpoints kept (>= 2: the previous one is the fallback when the
            newest cannot be restored); older ones are deleted after a newer one is complete.
        async_save: write in a background thread (call `wait()` before reading the files).
    """

    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
        from etils import epath

        from grlhfv_jax import storage

        if max_to_keep < 2:
            raise ValueError(
                f"max_to_keep={max_to_keep}: keep at least 2 checkpoints (the fallback of a bad newest one)"
            )
        directory = storage.durable(directory)
        self.directory = directory if storage.is_remote(directory) else os.path.abspath(directory)
        # a bucket folder is written by Orbax directly, unless storage.STAGE_CHECKPOINTS_ENV asks for
        # local steps copied to it once finished (then saves are synchronous)
        self._staged = storage.is_remote(directory) and storage.stage_checkpoints()
        where = self.directory
        if self._staged:
            where = storage.mirror_dir(self.directory)
            os.makedirs(where, exist_ok=True)
            storage.pull_steps(self.directory, where)
            async_save = False
        self._local = where
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(epath.Path(where), options=options)

    def _publish(self, step: int | None = None) -> None:
        """Staged mode: copies a finished step to the bucket and drops the steps the manager dropped."""
        if not self._staged or jax.process_index() != 0:
            return
        from grlhfv_jax import storage

        if step is not None:
            self._manager.wait_until_finished()
            storage.push_step(self._local, self.directory, int(step))
        storage.prune_steps(self.directory, self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        model: nnx.Module,
        optimizer: nnx.Optimizer | None = None,
        extra: dict[str, Any] | None = None,
        *,
        force: bool = True,
    ) -> None:
        """Starts saving `step`. A failure (e.g. disk full) raises with the directory named."""
        try:
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_train_state(model, optimizer)),
                    extra=ocp.args.JsonSave(dict(extra or {})),
                ),
                force=force,
            )
            self._publish(step)
        except OSError as e:
            raise OSError(
                f"could not write checkpoint step {step} under {self.directory}: {e}. "
                f"The previous checkpoint ({self.latest_step()}) is kept."
            ) from e

    def restore_latest(self, model: nnx.Module, optimizer: nnx.Optimizer | None = None) -> tuple[int, dict] | None:
        """Loads the newest finished step into `model` / `optimizer` in place.

        Returns (step, extra), or None when there is no checkpoint. Arrays keep the shardings the
        live model has. A step that cannot be read (damaged files, another model's checkpoint) is
        skipped with a warning for the next older one; the skipped steps are deleted once an older
        one is restored (the run overwrites them). When no step can be read, raises
        `UnrestorableCheckpointError` naming each step and its error, and deletes nothing.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        target = _train_state(model, optimizer)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        errors = []
        for step in steps:
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()),
                )
            except Exception as e:  # noqa: BLE001  (orbax / tensorstore raise many kinds)
                errors.append((step, f"{type(e).__name__}: {str(e)[:300]}"))
                older = [s for s in steps if s < step]
                msg = f"checkpoint step {step} in {self.directory} cannot be restored ({errors[-1][1]}); " + (
                    f"falling back to step {older[0]}" if older else "no older step is left"
                )
                log.warning(msg)
                print(f"WARNING: {msg}", flush=True)
                continue
            break
        else:
            raise UnrestorableCheckpointError(
                f"no checkpoint in {self.directory} can be restored (nothing was deleted): "
                + "; ".join(f"step {s}: {e}" for s, e in errors)
            )
        for bad, _ in errors:  # newer than the restored step: the run writes these steps again
            self._manager.delete(bad)
        if errors:
            self._publish()
        state = restored["state"]
        params = nnx.state(model, nnx.Param)
        nnx.replace_by_pure_dict(params, state["model"])
        nnx.update(model, params)
        if optimizer is not None:
            opt_state = nnx.state(optimizer, nnx.optimizer.OptState)
            nnx.replace_by_pure_dict(opt_state, state["opt"])
            nnx.update(optimizer, opt_state)
        log.info("restored checkpoint step %d from %s", step, self.directory)
        return step, dict(restored["extra"] or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


EXPORT_SUMMARY = "stage_summary.json"


def export_hf(model: nnx.Module, path: str, summary: dict | None = None, codec=None) -> str:
    """Writes `model` as a Hugging Face checkpoint folder (config.json + safetensors); with the
    run's `codec` (`encoding.Codec`) a complete one: tokenizer with chat template, image
    processor and generation configs, special ids of that tokenizer (`grlhfv_jax.hf_folder.write_folder`).

    `summary` (the figures the stage reports for this model) goes into the same folder as
    `stage_summary.json`; the folder appears complete or not at all (written aside, then renamed),
    so a stage that finds it can skip the work and still report the same figures.
    """
    if jax.process_count() > 1:  # every host gathers the parameters (a collective); process 0 alone writes
        from jax.experimental import multihost_utils

        from grlhfv_jax import sharding

        graphdef, state = nnx.split(model)
        host_model = nnx.merge(graphdef, sharding.host_values(state))
        if sharding.is_writer():
            _export_files(host_model, path, summary, codec)
        multihost_utils.sync_global_devices(f"export_hf {path}")  # nobody reads the folder before it is there
        return path
    return _export_files(model, path, summary, codec)


def _export_files(model, path: str, summary: dict | None, codec) -> str:
    from grlhfv_jax.metrics import write_json_atomic
    from grlhfv_jax.models import save_pretrained

    tmp = path.rstrip("/") + ".tmp"
    if os.path.exists(tmp):  # left by a crash mid-export
        shutil.rmtree(tmp)
    if codec is not None:
        from grlhfv_jax.hf_folder import write_folder

        write_folder(model, tmp, codec)
    else:
        save_pretrained(model, tmp)
    write_json_atomic(os.path.join(tmp, EXPORT_SUMMARY), dict(summary or {}))
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def exported_summary(path: str) -> dict | None:
    """The summary stored with a finished export at `path`, or None when there is no finished export."""
    import json

    if not os.path.isfile(os.path.join(path, "config.json")):
        return None
    found = os.path.join(path, EXPORT_SUMMARY)
    if not os.path.isfile(found):
        return {}
    with open(found, encoding="utf-8") as f:
        return json.load(f)
