"""Run logging: metrics.jsonl, TensorBoard event files, summary.json, progress bars."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from tqdm.auto import tqdm


def _to_float(v: Any) -> float | None:
    try:
        f = float(np.asarray(v))
    except (TypeError, ValueError):
        return None
    return f


class MetricsWriter:
    """Writes scalars to `workdir/metrics.jsonl` (one JSON object per line) and TensorBoard.

    Every line is flushed as it is written, so a crash loses nothing already logged. In a remote
    workdir (`gs://`; an object store cannot append) the lines go to the local mirror's copy
    (`storage`), uploaded whole at most every `upload_every_s` seconds and at each `flush`;
    tensorboardX writes its event files to the bucket itself.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True, upload_every_s: float = 60.0):
        from grlhfv_jax import storage

        self.workdir = workdir
        self._remote = storage.is_remote(workdir)
        local = storage.local(workdir)
        os.makedirs(local, exist_ok=True)
        self._local_path = os.path.join(local, "metrics.jsonl")
        self._jsonl = open(self._local_path, "a", encoding="utf-8")
        self._upload_every, self._uploaded = float(upload_every_s), time.time()
        self._tb = None
        if tensorboard and is_main_process():
            from tensorboardX import SummaryWriter  # small, TensorFlow-free event writer; writes gs:// too

            self._tb = SummaryWriter(logdir=os.fspath(storage.path(workdir) / "tensorboard"))

    def write(self, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Logs `metrics` (scalars; non-scalars are skipped) under `stage/name` at `step`."""
        row: dict[str, Any] = {"stage": stage, "step": int(step), "time": time.time()}
        for k, v in metrics.items():
            f = _to_float(v)
            if f is None:
                continue
            row[k] = f if math.isfinite(f) else str(f)
            if self._tb is not None and math.isfinite(f):
                self._tb.add_scalar(f"{stage}/{k}", f, int(step))
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._remote and time.time() - self._uploaded > self._upload_every:
            self._upload()

    def _upload(self) -> None:
        if self._remote and is_main_process():
            from grlhfv_jax import storage

            storage.upload(self._local_path, self.workdir.rstrip("/") + "/metrics.jsonl")
        self._uploaded = time.time()

    def flush(self) -> None:
        self._jsonl.flush()
        self._upload()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._jsonl.close()
        if self._tb is not None:
            records = [
                getattr(
                    getattr(getattr(getattr(w, "event_writer", None), "_ev_writer", None), "_py_recordio_writer", None),
                    "_writer",
                    None,
                )
                for w in (self._tb.all_writers or {}).values()
            ]
            self._tb.close()
            for r in records:  # tensorboardX's gs:// writer uploads its whole file again when collected,
                if type(r).__name__ == "GCSRecordWriter":  # possibly at exit: it is complete now
                    r.flush = lambda: None
            self._tb = None


def read_jsonl(path: str) -> list[dict]:
    """Reads a metrics.jsonl, skipping a torn last line (a crash mid-write)."""
    from grlhfv_jax import storage

    rows = []
    path = storage.path(path)
    if not path.exists():
        return rows
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename (never a half-written file; a
    temporary name of its own, so writers on several hosts of one shared folder never collide).
    A bucket path (`gs://`) is written in one upload: an object appears whole or not at all."""
    from grlhfv_jax import storage

    storage.write_text(path, text)


def write_json_atomic(path: str, obj: Any) -> None:
    """`obj` as JSON through `write_text_atomic`."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(o: Any):
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    return str(o)


def update_summary(workdir: str, values: Mapping[str, Any]) -> dict:
    """Merges flat `values` (e.g. {"grm/accuracy_id": 0.9}) into `workdir/summary.json`.

    Non-finite numbers (a rate with nothing to count) are written as null. Only process 0 writes
    (a workdir shared by several hosts); every process gets the merged summary back."""
    from grlhfv_jax import storage

    path = storage.path(workdir) / "summary.json"
    summary = {}
    if path.exists():
        summary = json.loads(path.read_text(encoding="utf-8"))
    for k, v in values.items():
        f = _to_float(v)
        if f is None or isinstance(v, str):
            summary[k] = v
        else:
            summary[k] = f if math.isfinite(f) else None  # strict JSON: undefined rates are null
    if is_main_process():
        write_json_atomic(os.fspath(path), summary)
    return summary


def progress(iterable=None, *, total=None, desc: str = "", initial: int = 0, disable: bool | None = None):
    """A tqdm progress bar, shown only on the main process (`initial`: steps already done)."""
    if disable is None:
        disable = not is_main_process()
    return tqdm(iterable, total=total, desc=desc, initial=initial, disable=disable, dynamic_ncols=True, leave=True)


def is_main_process() -> bool:
    """Process 0 of a multi-host run (the only one a single-host run has): the one that logs and
    writes a workdir's shared files."""
    import jax

    return jax.process_index() == 0
