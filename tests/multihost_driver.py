"""`python -m grlhfv_jax.main` with a change made at run time by the test (the package has no hook
for either):

    python tests/multihost_driver.py MODE [main's flags ...]

MODE:
- `hosts_rows_as_global`: the mutant of tests/test_multihost_pipeline.py. Each host places its own
  rows (and its own images) as if they were the whole global batch: `sharding.gather_batch` gives
  the host's batch back unchanged and `sharding.global_batch` is the one-process placement
  `sharding.shard_batch(rows, mesh)` (the old `trainers.loop.place_batch` on several hosts).
- `sigterm:P:STAGE:CALL`: process P sends itself SIGTERM just before the CALL-th (0-based) step of
  stage STAGE's train loop (the step in progress completes, then the loop sees the signal); every
  process prints a line for each step of STAGE it starts.

Exits as the command line does: 0 when the pipeline finishes, `loop.PREEMPTED_EXIT_CODE` (75) when
SIGTERM / SIGINT stopped it.
"""

import os
import signal
import sys


def _hosts_rows_as_global() -> None:
    from grlhfv_jax import sharding

    def own_rows(batch, keys):
        return batch

    def rows_as_global(
        host_rows,
        mesh,
        *,
        batch_axes=sharding.BATCH_AXES,
        replicated_keys=sharding.REPLICATED_BATCH_KEYS,
        global_keys=(),
    ):
        return sharding.shard_batch(host_rows, mesh, batch_axes=batch_axes, replicated_keys=replicated_keys)

    sharding.gather_batch = own_rows
    sharding.global_batch = rows_as_global


def _sigterm(process: int, stage: str, call: int) -> None:
    import jax

    from grlhfv_jax.trainers import loop

    train_loop = loop.train_loop

    def signalling_loop(name, state, *, step_fn, **kw):
        calls = [0]

        def step(st, batch):
            me = jax.process_index()
            if name == stage:
                print(f"[driver] process {me} starts {name}'s step call {calls[0]}", flush=True)
                if me == process and calls[0] == call:
                    print(f"[driver] SIGTERM to process {me} during {name}'s step call {call}", flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)
            calls[0] += 1
            return step_fn(st, batch)

        return train_loop(name, state, step_fn=step, **kw)

    loop.train_loop = signalling_loop


def main() -> None:
    mode, flags = sys.argv[1], sys.argv[2:]
    if mode == "hosts_rows_as_global":
        _hosts_rows_as_global()
    elif mode.startswith("sigterm:"):
        _, p, stage, call = mode.split(":")
        _sigterm(int(p), stage, int(call))
    else:
        sys.exit(f"unknown mode {mode!r}")
    from absl import app

    from grlhfv_jax import main as cli

    sys.argv = [sys.argv[0]] + flags
    app.run(cli.main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
