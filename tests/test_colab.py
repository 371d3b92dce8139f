"""colab/quickstart.ipynb runs headlessly (nbclient) on a copy of the smoke pipeline's finished run
(the `smoke_run` fixture; the demo cell's command is the one that run was made with, so the cell
resumes it): the headline table, the plots, then (second execution) the real-checkpoint cell on a
tiny checkpoint folder. That the demo runs from nothing is tested by tests/test_pipeline.py and by CI's
demo command, which run the same command."""

import json
import os
import shutil

import nbformat
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "colab", "quickstart.ipynb")


def _execute(env: dict, cwd: str):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", ""))
            out.extend(str(v) for v in o.get("data", {}).values())
    return "\n".join(out)


def test_quickstart_notebook_shows_the_short_demo_and_runs_a_checkpoint(smoke_run, tmp_path):
    workdir = str(tmp_path / "demo")
    shutil.copytree(smoke_run[1], workdir)
    os.remove(os.path.join(workdir, "report.html"))  # the notebook's run writes it again
    env = {"GRLHFV_DEMO_MODE": "short", "GRLHFV_WORKDIR": workdir, "GRLHFV_CKPT": str(tmp_path / "no_ckpt")}
    text = _text(_execute(env, str(tmp_path)))
    assert "finished in an earlier run" in text  # the demo cell resumed the finished run: every stage skipped
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert "grm/accuracy_id" in summary and "dpo/oracle_score_after" in summary
    assert os.path.isfile(os.path.join(workdir, "report.html"))
    assert "Reward models: pairwise accuracy" in text and "GRM after stage 1" in text  # the headline table
    assert "Stage 1 (GRM RL)" in text  # the verdict lines
    assert "data:image/png;base64" in text  # the plots, inline
    assert f"tensorboard --logdir {workdir}/tensorboard" in text
    assert "no checkpoint at" in text

    # A checkpoint folder as users hold one: model (the demo's SFT policy), tokenizer, image processor.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(os.path.join(workdir, "sft", "policy"), ckpt)
    tok_dir = json.load(open(os.path.join(workdir, "data_paths.json")))["tokenizer_dir"]
    for name in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, name), ckpt / name)
    from grlhfv_jax import processing

    processing.load_image_processor(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14).save_pretrained(str(ckpt))
    text = _text(_execute(dict(env, GRLHFV_CKPT=str(ckpt)), str(tmp_path)))
    assert "parameters on 8 device(s):" in text  # loaded, sharded over the (fake) devices, answered
