"""colab/grm_stage1.ipynb runs headlessly (nbclient) on CPU: a tiny Qwen2-VL checkpoint folder (random
weights, a tokenizer trained on the fixture's words and the paper's GRM template) and a JSONL
preference file with PNG images; the notebook runs the paper's stage-1 config for 2 steps through
`python -m grlhfv_jax.main` and prints the judgments the run wrote. A missing checkpoint stops it
with one line before anything runs."""

import json
import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from grlhfv_jax.rl.grm_reward import pair_reward

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "colab", "grm_stage1.ipynb")


def _execute(env: dict, cwd: str):
    """Runs the notebook with `env` in its kernel's environment; returns (notebook, error or None)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    error = None
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    except CellExecutionError as e:
        error = e
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb, error


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", ""))
            out.extend(f"{k}: {v}" for k, v in o.get("data", {}).items())
            out.extend(o.get("traceback", []))
    return "\n".join(out)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A checkpoint folder as users hold one (config.json, safetensors, tokenizer) and a JSONL file
    of 4 pairs whose images are PNG files beside it."""
    from flax import nnx

    from grlhfv_jax import config as config_schema
    from grlhfv_jax import encoding, models, roles
    from grlhfv_jax.data.tokenizer import train_tokenizer
    from grlhfv_jax.rl.grm_reward import build_grm_prompt
    from test_files_source import SMALL_MODEL, _rows, _write  # tests/ is on sys.path

    root = tmp_path_factory.mktemp("colab_grm")
    rows = _rows(4)
    _, prefs = _write(root, "pairs", rows)
    tok = str(root / "tokenizer")
    texts = [r[k] for r in rows for k in ("question", "response_1", "response_2")]
    texts += [build_grm_prompt("q", "a", "b")] * 20  # the paper's template: its words few tokens each
    train_tokenizer(texts * 5, tok, vocab_size=1000)
    codec = encoding.Codec.from_dirs(tok, dict(min_pixels=56 * 56, max_pixels=56 * 56))
    spec = config_schema.typed_section(config_schema.sections.MODEL, dict(hf_config=SMALL_MODEL))
    ckpt = root / "ckpt"
    models.save_pretrained(models.from_config(roles.model_config(spec, codec), rngs=nnx.Rngs(0)), str(ckpt))
    for name in os.listdir(tok):
        shutil.copy(os.path.join(tok, name), ckpt / name)
    return str(ckpt), prefs


def test_grm_notebook_runs_stage_1_and_shows_the_runs_judgments(inputs, tmp_path):
    ckpt, prefs = inputs
    workdir = tmp_path / "run"
    env = {
        "GRLHFV_CKPT": ckpt,
        "GRLHFV_PREFS": prefs,
        "GRLHFV_WORKDIR": str(workdir),
        "GRLHFV_STEPS": "2",
        "GRLHFV_PAIRS": "2",
        "GRLHFV_GROUP": "2",
        "GRLHFV_MAX_NEW_TOKENS": "8",
        "GRLHFV_EVAL_PAIRS": "4",
        "GRLHFV_OVERRIDES": "--config.grm_rl.max_len=512",
    }
    nb, error = _execute(env, str(tmp_path))
    text = _text(nb)
    assert error is None, text[-3000:]
    assert "jax.devices(): [CpuDevice(id=0)" in text

    rows = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    steps = [r for r in rows if r["stage"] == "grm_rl" and "judge/accuracy" in r]
    assert [r["step"] for r in steps] == [1, 2]  # the 2 steps asked for, each logged
    assert "grm_rl: 2 training steps" in text
    for r in steps:
        assert (
            f"step {r['step']}: judge/accuracy {r['judge/accuracy']:.3f}  parse_failure {r['judge/parse_failure']:.3f}"
            in text
        )

    assert (workdir / "grm_rl" / "grm" / "config.json").is_file() and (workdir / "report.html").is_file()
    summary = json.load(open(workdir / "summary.json"))
    assert f"id: before {summary['grm/sft_accuracy_id']:.3f} -> after {summary['grm/accuracy_id']:.3f}" in text

    samples = [json.loads(x) for x in open(workdir / "samples" / "judgments.jsonl")]
    assert len(samples) == 4
    shown = text.split("===== pair ")[1:]
    assert len(shown) == 4  # GRLHFV_SHOW's default
    for s, block in zip(samples, shown):  # the printed judgments are the run's own
        assert f"QUESTION: {s['question']}\nRESPONSE 1: {s['response_1']}\nRESPONSE 2: {s['response_2']}" in block
        assert f"JUDGMENT:\n{s['output']}\nSCORES: {s['scores']} | HUMAN PREFERS: response {s['preferred']}" in block
        assert ("matches the human label" in block) == (pair_reward(s["output"], s["preferred"]) == 1.0)
    assert text.count("image/png: ") == 4  # each pair's image, inline

    # A missing checkpoint and preference file: one clear line each, nothing run.
    missing, no_prefs = tmp_path / "no_ckpt", tmp_path / "no_prefs.jsonl"
    nb, error = _execute(
        dict(env, GRLHFV_CKPT=str(missing), GRLHFV_PREFS=str(no_prefs), GRLHFV_WORKDIR=str(tmp_path / "run2")),
        str(tmp_path),
    )
    text = _text(nb)
    assert error is not None and error.ename == "NotebookStop"
    assert f"no checkpoint at {missing} (no config.json there)" in text
    assert f"no preference file at {no_prefs}: set GRLHFV_PREFS / PREFS" in text and "no test preference" not in text
    assert "stopped: missing input(s), see above; nothing was run" in text
    assert "Traceback" not in text and not (tmp_path / "run2").exists()
