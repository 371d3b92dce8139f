"""The command line: `python -m grlhfv_jax.main --config configs/X.py [--config.a.b=v] [--workdir D]`.

Runs the stages named in `config.stages` in order; each reads what the previous ones wrote in the
workdir. The config is validated before anything heavy starts. A rerun with the same workdir and
config skips finished stages and resumes an interrupted one from its last checkpoint; a rerun with
a different config stops with a message listing what differs (use `--restart` to start over).

The config is validated once (`grlhfv_jax.config.validate`), before jax starts: a key the schema
does not know (in the file or on the command line), a value out of its range, a broken rule between
keys stops the run with a one-line error naming the key (and, for a typo, the nearest valid one).
The stages receive the validated config, frozen. `--describe grm_rl` lists a section's keys with
their types, defaults, constraints and meanings.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from grlhfv_jax import config as config_schema
from grlhfv_jax import storage

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: config.workdir).")
_RESTART = flags.DEFINE_bool("restart", False, "Delete an existing run in the workdir and start over.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "Validate the config, build every model abstractly (no weights, no "
    "data, no compilation), print the memory per device and exit: 1 when it does not fit.",
)
_DESCRIBE = flags.DEFINE_string(
    "describe",
    None,
    "Print the keys of a config section (e.g. grm_rl, sft.policy; "
    "'all' for every section) with type, default and meaning, and exit.",
)

RUN_STATE = "run_state.json"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _config_diff(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    return sorted(k for k in set(a) | set(b) if k != "stages" and a.get(k) != b.get(k))


def _write_run_state(workdir: str, state: dict) -> None:
    from grlhfv_jax.metrics import is_main_process, write_json_atomic

    if is_main_process():
        write_json_atomic(os.fspath(storage.path(workdir) / RUN_STATE), state)


def _restart_barrier() -> None:
    """With several JAX processes, all wait here until process 0 has deleted the previous run
    (`--restart`): before it, another process could read that run's files (a converted dataset,
    a checkpoint) or write into the folder being deleted. A device collective, but a short one:
    every process reaches it right after validating the config."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("grlhfv_jax --restart: previous run deleted")


def prepare_workdir(config, workdir: str, restart: bool) -> dict:
    """Creates or re-opens `workdir`; returns its run state ({"stages": {name: {...}}}).

    Several processes share the workdir: only process 0 deletes a previous run (`restart`) and
    writes run_state.json and config.json (each through a temporary file and a rename); the others
    read a previous run's state (none under `restart`, where they wait for the deletion: a barrier)
    and write nothing.

    `workdir` may be a bucket (`gs://...`): see `grlhfv_jax.storage` for what is written there and
    what goes through a local mirror (`--restart` deletes both)."""
    from grlhfv_jax.metrics import is_main_process, write_text_atomic

    cfg = json.loads(config.to_json_best_effort())
    path = storage.path(workdir) / RUN_STATE
    main = is_main_process()
    if main and restart and path.exists():
        print(f"--restart: deleting the previous run in {workdir}", flush=True)
        storage.path(workdir).rmtree()
    if restart and storage.is_remote(workdir):
        storage.forget(workdir)  # this host's mirror of the deleted run
    if restart:
        _restart_barrier()
    storage.path(workdir).mkdir(parents=True, exist_ok=True)
    if not restart and path.exists():
        state = json.loads(path.read_text(encoding="utf-8"))
        diff = _config_diff(state["config"], cfg)
        if diff:
            raise SystemExit(
                f"{workdir} holds a run made with a different config (differs at: {', '.join(diff[:12])}). "
                "Use another --workdir, or --restart to delete that run."
            )
    else:
        state = {"config": cfg, "stages": {}}
    state["config"] = cfg
    _write_run_state(workdir, state)
    if main:
        write_text_atomic(os.fspath(storage.path(workdir) / "config.json"), config.to_json_best_effort(indent=2))
    return state


def release_compiled_programs() -> None:
    """Drops jax's compiled programs (called between stages). Each keeps memory maps of its code:
    the smoke pipeline's stages leave ~27,000 in one process by its end, and a process that reaches
    the kernel's `vm.max_map_count` (often 65,530) crashes inside its next compile (seen in the
    test workers). A later stage recompiles what it shares, or reads the persistent compilation
    cache."""
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


def _stage_minutes(config, name: str) -> float:
    """The time-based checkpoint interval of stage `name` (its section's `ckpt_every_minutes`)."""
    from grlhfv_jax import stages
    from grlhfv_jax.config import sections

    return float(config[stages.STAGES[name][1]].get("ckpt_every_minutes", sections.CKPT_EVERY_MINUTES))


def _push(workdir: str, writer=None) -> None:
    """Copies what the stages wrote in the local mirror of a remote workdir to the bucket
    (`storage.push`; process 0), then every other process pulls it into its own mirror."""
    if not storage.is_remote(workdir):
        return
    from grlhfv_jax.metrics import is_main_process

    if writer is not None:
        writer.flush()
    if is_main_process():
        n = storage.push()
        if n:
            print(f"[run] copied {n} files to {workdir}", flush=True)
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("grlhfv_jax: stage outputs pushed")
        if not is_main_process():  # what process 0 alone wrote (its exports) into this host's mirror
            for loc, remote in list(storage._mirrors.items()):
                storage.pull(remote, loc)


def _local_inputs(config):
    """`config` (validated, frozen) with each input path that is a bucket URL replaced by a local
    copy (`storage.local_input`): model checkpoints, preference files, the tokenizer and processor
    folders, a GRM to judge with. The config as given is what run_state.json records."""

    def fix(sec, *keys):
        changes = {
            k: storage.local_input(sec[k]) for k in keys if isinstance(sec.get(k), str) and storage.is_remote(sec[k])
        }
        return sec.replace(**changes) if changes else sec

    changes = {}
    if "model" in config:
        changes["model"] = config.model.replace(**{role: fix(spec, "path") for role, spec in config.model.items()})
    if "data" in config:
        data = fix(config.data, "tokenizer_dir")
        if "files" in data:
            data = data.replace(files=data.files.replace(**{s: fix(f, "path") for s, f in data.files.items()}))
        changes["data"] = data
    changes["image"] = fix(config.image, "processor_dir")
    for name, sec in config.items():
        if name in ("policy_rl", "policy_rl_rm"):
            changes[name] = fix(sec, "grm_path")
        elif name == "nscale":
            changes[name] = sec.replace(policy=fix(sec.policy, "grm_path"))
    return config.replace(**changes)


def run(config, workdir: str, restart: bool = False, typed=None) -> dict:
    """Validates `config` (the ConfigDict as given; `typed`: its validated copy, when the caller made
    it), then runs its stages in order. Returns the summary dict.

    `workdir` may be a bucket (`gs://...`): the stages then read and write a local mirror of it that
    is copied to the bucket after each stage (`grlhfv_jax.storage`), and a rerun on another
    machine pulls it back first. SIGTERM / SIGINT stop the run at the next step boundary of the
    stage's train loop, after a checkpoint (or after the stage, outside a train loop): raises
    `trainers.loop.Preempted` (the command line exits with `loop.PREEMPTED_EXIT_CODE`)."""
    from grlhfv_jax import stages
    from grlhfv_jax.metrics import MetricsWriter, update_summary
    from grlhfv_jax.trainers import loop

    full = config_schema.validate(typed if typed is not None else config)  # errors name the key, before compiling
    state = prepare_workdir(config, workdir, restart)  # records the config as given
    config = _local_inputs(full)
    local = storage.local(workdir)  # where the stages write (the workdir, or its local mirror)
    from grlhfv_jax import precision

    print(f"[run] matmul precision: {precision.apply(config)}", flush=True)
    from grlhfv_jax import compile_cache

    print(f"[run] compilation cache: {compile_cache.enable(config, local) or 'off'}", flush=True)
    if local != workdir:
        print(f"[run] workdir {workdir}; stage files staged in {local}", flush=True)
    writer = MetricsWriter(workdir, tensorboard=config.tensorboard)
    summary = update_summary(workdir, {})  # what earlier runs in this workdir found
    try:
        with loop.preemption_handlers():
            for name in config.stages:
                if loop.stop_requested():
                    print(
                        f"[run] {loop.stop_requested()}: stopping before stage {name}; run the same command "
                        "again to continue",
                        flush=True,
                    )
                    raise loop.Preempted(name, 0, loop.stop_requested())
                rec = state["stages"].get(name, {})
                if rec.get("status") == "done":
                    print(
                        f"[{name}] finished in an earlier run ({rec.get('wall_s', 0):.0f} s); skipping. "
                        f"Use --restart to redo it.",
                        flush=True,
                    )
                    continue
                if rec.get("status") == "running":
                    print(f"[{name}] was interrupted in an earlier run; resuming from its last checkpoint.", flush=True)
                state["stages"][name] = {"status": "running", "started": time.time()}
                _write_run_state(workdir, state)
                print(f"[{name}] starting", flush=True)
                t0 = time.time()
                loop.stage_defaults["ckpt_every_minutes"] = _stage_minutes(config, name)
                result = stages.run_stage(name, config, local, writer) or {}
                wall = time.time() - t0
                result[f"time/{name}_s"] = wall
                _push(workdir, writer)
                summary = update_summary(workdir, result)
                state["stages"][name] = {"status": "done", "wall_s": wall}
                _write_run_state(workdir, state)
                print(f"[{name}] done in {wall:.0f} s", flush=True)
                release_compiled_programs()
    except loop.Preempted:
        _push(workdir, writer)  # what the stage finished before the signal (an export) is kept
        raise
    finally:
        writer.close()
    if "report" in config and config.report.enabled:
        from grlhfv_jax import report

        path = report.write_report(workdir)
        print(f"report: {path}", flush=True)
    print(json.dumps(summary, indent=2, sort_keys=True), flush=True)
    return summary


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with `--config.a.b=v` overrides checked against the schema first (a bad
    key exits with one line naming it and the nearest valid key) and applied by type, whether or
    not the config file sets the key."""
    overrides = [a for a in argv[1:] if a.startswith("--config.") and "=" in a]
    try:
        config_schema.check_overrides(overrides)
        kept, saved = [a for a in argv if a not in overrides], sys.argv
        sys.argv = kept  # ml_collections also reads its overrides from sys.argv
        try:
            rest = app.parse_flags_with_usage(kept)
        finally:
            sys.argv = saved
        if _CONFIG.value is not None:
            config_schema.apply_overrides(_CONFIG.value, overrides)
    except config_schema.ConfigError as e:
        sys.exit(f"config error: {e}")
    return rest


def main(argv):
    del argv
    if _DESCRIBE.value is not None:
        try:
            print(config_schema.describe("" if _DESCRIBE.value == "all" else _DESCRIBE.value))
        except config_schema.ConfigError as e:
            sys.exit(f"config error: {e}")
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # "PyTorch was not found": we use none of it
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS / orbax chatter; progress bars tell the story
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/demo.py")
    try:
        typed = config_schema.validate(config)  # once, before jax starts: a bad key is one line naming it
        if _DRY_RUN.value:  # placeholders allowed: nothing is read
            from grlhfv_jax import dry_run

            sys.exit(dry_run.run(typed))
        left = config_schema.placeholders(config)
        if left:
            (key, value), rest = left[0], [k for k, _ in left[1:]]
            raise config_schema.ConfigError(
                f"config.{key} = {value!r} is a placeholder: set it on the command line (--config.{key}=...)"
                + (f"; also {', '.join(rest)}" if rest else "")
            )
    except config_schema.ConfigError as e:
        sys.exit(f"config error: {e}")
    workdir = _WORKDIR.value or typed.workdir
    from grlhfv_jax.sharding import initialize_distributed

    initialize_distributed()
    from grlhfv_jax.trainers import loop

    try:
        run(config, workdir, _RESTART.value, typed=typed)
    except loop.Preempted:  # the train loop (or run, between stages) printed the stage and step
        sys.exit(loop.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=parse_flags))
