"""Where a run's files live: a local folder, or a bucket (`gs://...`, any `etils.epath` URL).

A workdir (or `config.data.dir`) may be remote. What goes where:
- written straight to the bucket through `etils.epath`: run_state.json, config.json, summary.json,
  report.html, the TensorBoard event files (tensorboardX writes gs:// itself) and the training
  checkpoints (Orbax / tensorstore write gs:// themselves: `Checkpointer` maps a stage's
  checkpoint folder to the bucket with `durable`);
- staged in a local mirror and copied to the bucket (`push`): what the stages write with plain
  file I/O that cannot reach a bucket: the Hugging Face model folders (safetensors), the data
  conversion cache (array_record shards read by grain, the tokenizer folder), samples, the small
  JSON files stages keep beside their outputs; metrics.jsonl (an object store cannot append: the
  local file is appended, then uploaded whole). The run pushes after each stage, and when it is
  preempted; a rerun on any machine first pulls the bucket into its mirror (`mirror`), training
  checkpoints excepted (they are read from the bucket).
- kept local: the compilation cache (relative to the mirror).

On several hosts each has its own mirror: process 0 pushes after a stage, the others then pull.
Not handled: a files-kind data stage on several hosts, whose other hosts wait for process 0's
conversion through a status file in the data folder, which their mirrors do not share (give such a
run a `config.data.dir` on a file system every host mounts, or convert on one host first).

The mirror of `gs://b/run` is `<staging root>/gs/b/run`; the staging root is `$GRLHFV_STAGING_DIR`,
else `~/.cache/grlhfv_jax/staging`. It must be the same on every machine a run resumes on: the data
stage records absolute paths in it (data_paths.json).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable

from etils import epath

STAGING_ENV = "GRLHFV_STAGING_DIR"
# Folders under a mirror that are never copied either way: checkpoints (read and written in the
# bucket by Orbax), the local compilation cache, TensorBoard (written to the bucket directly).
SKIP_PREFIXES = ("ckpt",)
SKIP_NAMES = ("xla_cache", "tensorboard")
_PUSHED = ".pushed.json"  # (size, mtime) of each file last pushed, in the mirror

_mirrors: dict[str, str] = {}  # local mirror -> remote folder


def is_remote(path) -> bool:
    """True for a URL (`gs://b/x`, `s3://...`); False for a local path (or `file://`)."""
    s = os.fspath(path)
    return "://" in s and not s.startswith("file://")


def path(p) -> epath.Path:
    """`p` as an `epath.Path` (a local path, or a bucket URL)."""
    return epath.Path(p)


def staging_root() -> str:
    root = os.environ.get(STAGING_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "grlhfv_jax", "staging")
    return os.path.abspath(os.path.expanduser(root))


def mirror_dir(remote: str) -> str:
    """The local mirror folder of `remote` (not created)."""
    scheme, rest = os.fspath(remote).split("://", 1)
    return os.path.join(staging_root(), scheme, *[p for p in rest.split("/") if p not in ("", ".", "..")])


def local(p: str) -> str:
    """Where a stage reads and writes `p` with plain file I/O: itself when local, else its mirror
    (registered, and pulled from the bucket the first time: `mirror`)."""
    return mirror(p) if is_remote(p) else p


def mirror(remote: str, *, pull_now: bool = True) -> str:
    """Registers and returns the local mirror of `remote`, after copying into it what the bucket
    holds (once per process; checkpoints and SKIP_NAMES excepted)."""
    remote = os.fspath(remote).rstrip("/")
    loc = mirror_dir(remote)
    if loc not in _mirrors:
        os.makedirs(loc, exist_ok=True)
        _mirrors[loc] = remote
        if pull_now:
            pull(remote, loc)
    return loc


def forget(remote: str) -> None:
    """Deletes the local mirror of `remote` (a `--restart`), and unregisters it."""
    loc = mirror_dir(os.fspath(remote).rstrip("/"))
    _mirrors.pop(loc, None)
    shutil.rmtree(loc, ignore_errors=True)


def durable(p: str) -> str:
    """The bucket path of `p` when it lies in a registered mirror (a stage's checkpoint folder in a
    remote workdir), else `p` itself."""
    s = os.path.abspath(os.fspath(p))
    for loc, remote in _mirrors.items():
        if s == loc or s.startswith(loc + os.sep):
            return remote + "/" + os.path.relpath(s, loc).replace(os.sep, "/") if s != loc else remote
    return os.fspath(p)


def _skipped(rel: str) -> bool:
    parts = rel.replace(os.sep, "/").split("/")
    return any(p.startswith(SKIP_PREFIXES) or p in SKIP_NAMES or p == _PUSHED for p in parts) or ".tmp" in parts[-1]


def _remote_files(remote: str) -> Iterable[tuple[str, int]]:
    """(relative path, size) of every file under bucket folder `remote` (one listing call;
    through fsspec, the layer `etils.epath` uses for gs:// without TensorFlow)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(remote)
    root = root.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return
    for name, info in sorted(found.items()):
        if info.get("type", "file") == "file" and name.startswith(root + "/"):
            yield name[len(root) + 1 :], int(info.get("size") or 0)


def pull(remote: str, loc: str) -> int:
    """Copies the files of `remote` that `loc` lacks (or holds at another size) into `loc`; returns
    how many. A local file changed since it was last pushed or pulled is newer than the bucket's
    (a run on this machine stopped before its push) and is kept. Checkpoints are not copied (see
    module doc)."""
    n, pushed = 0, _read_pushed(loc)
    for rel, size in _remote_files(remote):
        if _skipped(rel):
            continue
        dst = os.path.join(loc, rel)
        if os.path.isfile(dst):
            st = os.stat(dst)
            if st.st_size == size or (rel in pushed and pushed[rel] != [st.st_size, st.st_mtime_ns]):
                continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.tmp.pull"
        path(remote).joinpath(rel).copy(epath.Path(tmp), overwrite=True)
        os.replace(tmp, dst)
        st = os.stat(dst)
        pushed[rel] = [st.st_size, st.st_mtime_ns]
        n += 1
    _write_pushed(loc, pushed)
    return n


def push(loc: str | None = None, exclude: Iterable[str] = ()) -> int:
    """Copies the files of mirror `loc` (every registered mirror when None) that changed since they
    were last pushed or pulled to the bucket; returns how many. Only process 0 calls this."""
    if loc is None:
        return sum(push(m, exclude) for m in list(_mirrors))
    remote, n, pushed = _mirrors[loc], 0, _read_pushed(loc)
    exclude = set(exclude)
    for dirpath, dirs, files in os.walk(loc):
        dirs[:] = sorted(d for d in dirs if not _skipped(os.path.relpath(os.path.join(dirpath, d), loc)))
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(dirpath, name), loc)
            if _skipped(rel) or rel in exclude:
                continue
            st = os.stat(os.path.join(dirpath, name))
            if pushed.get(rel) == [st.st_size, st.st_mtime_ns]:
                continue
            upload(os.path.join(dirpath, name), remote + "/" + rel.replace(os.sep, "/"))
            pushed[rel] = [st.st_size, st.st_mtime_ns]
            n += 1
    _write_pushed(loc, pushed)
    return n


def upload(src: str, dst: str) -> None:
    """Copies local file `src` to `dst` (a bucket object appears whole or not at all)."""
    if not is_remote(dst):
        path(dst).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(src).copy(path(dst), overwrite=True)


def _read_pushed(loc: str) -> dict:
    try:
        with open(os.path.join(loc, _PUSHED), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_pushed(loc: str, pushed: dict) -> None:
    tmp = os.path.join(loc, _PUSHED + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(pushed, f)
    os.replace(tmp, os.path.join(loc, _PUSHED))


def write_text(p: str, text: str) -> None:
    """Writes `text` to `p` whole: a local file through a temporary file and a rename; a bucket
    object in one upload (objects are never seen half-written)."""
    if not is_remote(p):  # a temporary name of its own: writers on several hosts of one folder never collide
        tmp = f"{p}.tmp.{uuid.uuid4().hex}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        return
    path(p).write_text(text, encoding="utf-8")  # a bucket has no folders to create


# Checkpoints of a remote folder are written by Orbax straight to the bucket (tensorstore's own
# gs:// driver): the only way several hosts can write one checkpoint. With this variable set to 1
# they are written to the local mirror instead and each finished step is then copied to the bucket
# (`push_step`; one process only): for a store tensorstore cannot write, e.g. a GCS emulator, whose
# replies to the OCDBT manifest's repeated conditional rewrites tensorstore rejects ("Malformed
# StorageGeneration") once a checkpoint holds tens of arrays.
STAGE_CHECKPOINTS_ENV = "GRLHFV_STAGE_CHECKPOINTS"
_STEP_DONE = "_CHECKPOINT_METADATA"  # Orbax writes it into every step; uploaded last, so its presence means complete


def stage_checkpoints() -> bool:
    return os.environ.get(STAGE_CHECKPOINTS_ENV, "").lower() in ("1", "true", "yes")


def _remote_steps(remote: str) -> dict[int, list[tuple[str, int]]]:
    steps: dict[int, list] = {}
    for rel, size in _remote_files(remote):
        head, _, rest = rel.partition("/")
        if head.isdigit() and rest:
            steps.setdefault(int(head), []).append((rest, size))
    return steps


def pull_steps(remote: str, loc: str) -> list[int]:
    """Copies the complete checkpoint steps of bucket folder `remote` that `loc` lacks into `loc`
    (each through a temporary folder and a rename); returns the steps copied."""
    got = []
    for step, files in sorted(_remote_steps(remote).items()):
        dst = os.path.join(loc, str(step))
        if os.path.isdir(dst) or _STEP_DONE not in {r for r, _ in files}:
            continue
        tmp = dst + ".tmp.pull"
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, _ in files:
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            path(remote).joinpath(str(step), rel).copy(epath.Path(os.path.join(tmp, rel)), overwrite=True)
        os.makedirs(loc, exist_ok=True)
        os.replace(tmp, dst)
        got.append(step)
    return got


def push_step(loc: str, remote: str, step: int) -> None:
    """Copies the finished local step folder `loc/<step>` to `remote/<step>`, `_CHECKPOINT_METADATA` last."""
    src = os.path.join(loc, str(step))
    files = sorted(
        (os.path.relpath(os.path.join(d, n), src) for d, _, ns in os.walk(src) for n in ns),
        key=lambda r: r == _STEP_DONE,
    )
    for rel in files:
        upload(os.path.join(src, rel), f"{remote}/{step}/{rel.replace(os.sep, '/')}")


def prune_steps(remote: str, keep) -> None:
    """Deletes the step folders of bucket folder `remote` whose step is not in `keep`."""
    for step in _remote_steps(remote):
        if step not in set(keep):
            path(remote).joinpath(str(step)).rmtree()


def local_input(p: str | None) -> str | None:
    """A local copy of an input a config names (a checkpoint or tokenizer folder, a parquet or JSONL
    file) when it is a bucket URL, else `p`: a folder is copied whole, a file alone (a JSONL file's
    images, named relative to it, are not: give such data as a local path), into the mirror folder
    of `p`; never copied back (`push` knows only `mirror`'s folders)."""
    if not p or not is_remote(p):
        return p
    import fsspec

    fs, rp = fsspec.core.url_to_fs(p)
    loc = mirror_dir(p)
    if fs.isdir(rp):
        os.makedirs(loc, exist_ok=True)
        pull(p, loc)
        return loc
    size = int(fs.info(rp).get("size") or 0)
    if not (os.path.isfile(loc) and os.path.getsize(loc) == size):
        os.makedirs(os.path.dirname(loc), exist_ok=True)
        path(p).copy(epath.Path(loc + ".tmp.pull"), overwrite=True)
        os.replace(loc + ".tmp.pull", loc)
    return loc
