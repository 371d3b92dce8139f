"""Runs the smoke pipeline and SIGKILLs itself at the first kill point not yet taken.

    python tests/resume_driver.py WORKDIR TAKEN_FILE

Kill points: the moment a training checkpoint is complete on disk (`<folder>@<step>`, mid-loop and
final) and the moment a model export is complete (`export:<folder>`). Each point taken is appended
to TAKEN_FILE (fsynced) before the kill, so calling this again resumes the run and dies at the
next point; it exits 0 once the pipeline finishes. The kill is the test's: the package has no
hook for it.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))


def main() -> None:
    workdir, taken_path = sys.argv[1], sys.argv[2]
    import jax

    jax.config.update("jax_num_cpu_devices", 8)  # as tests/conftest.py: the same arithmetic as the reference run

    import demo

    from grlhfv_jax import checkpoint
    from grlhfv_jax import main as cli
    from grlhfv_jax.stages import dpo, grm_rl, policy_ppo_rm, policy_rl, rm, sft, vision

    taken = set(open(taken_path).read().split()) if os.path.exists(taken_path) else set()

    def kill_point(name: str) -> None:
        if name in taken:
            return
        with open(taken_path, "a") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    save = checkpoint.Checkpointer.save

    def save_then_kill(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        self.wait()  # the checkpoint is complete on disk
        kill_point(f"{os.path.relpath(self.directory, workdir)}@{int(step)}")

    checkpoint.Checkpointer.save = save_then_kill
    export = checkpoint.export_hf

    def export_then_kill(model, path, summary=None, **kw):
        out = export(model, path, summary, **kw)
        kill_point("export:" + os.path.relpath(path, workdir))
        return out

    for module in (vision, sft, grm_rl, rm, policy_rl, policy_ppo_rm, dpo):
        module.export_hf = export_then_kill
    cli.run(demo.get_config("smoke"), workdir)


if __name__ == "__main__":
    main()
