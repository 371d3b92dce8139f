"""Runs the smoke pipeline (configs/demo.py:smoke) and sends itself a signal inside a training step.

    python tests/signal_driver.py WORKDIR STAGE CALL SIGNAL [--config.a.b=v ...]

SIGNAL (TERM, INT, KILL or none) is sent to this process just before the CALL-th (0-based) step of
stage STAGE's train loop that this process runs (a step in progress: it completes, then the loop
sees the signal). Exits as `python -m grlhfv_jax.main` does: 0 when the pipeline finishes,
`loop.PREEMPTED_EXIT_CODE` when SIGTERM / SIGINT stopped it, -9 when SIGKILL did. The signal is
the test's: the package has no hook for it.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))


def main() -> None:
    workdir, stage, call, signame = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    overrides = sys.argv[5:]
    import jax

    jax.config.update("jax_num_cpu_devices", 8)  # as tests/conftest.py: the same arithmetic as the reference run

    import demo

    from grlhfv_jax import config as config_schema
    from grlhfv_jax import main as cli
    from grlhfv_jax.trainers import loop

    train_loop = loop.train_loop

    def signalling_loop(name, state, *, step_fn, **kw):
        calls = [0]

        def step(st, batch):
            if name == stage and signame != "none" and calls[0] == call:
                print(f"[driver] SIG{signame} during {name}'s step call {call}", flush=True)
                os.kill(os.getpid(), getattr(signal, f"SIG{signame}"))
            calls[0] += 1
            return step_fn(st, batch)

        return train_loop(name, state, step_fn=step, **kw)

    loop.train_loop = signalling_loop
    config = demo.get_config("smoke")
    config_schema.apply_overrides(config, overrides)
    try:
        cli.run(config, workdir)
    except loop.Preempted:
        sys.exit(loop.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
