"""Stage 2 (policy_rl) with its GRM served over HTTP (`judge.kind = "http"`, grlhfv_jax.serve).

- The short demo's policy_rl, judged by the stage-1 GRM in process and by the same GRM folder
  behind `python -m grlhfv_jax.serve` on loopback (with an API key), run from the command line
  with `--config.policy_rl.judge.kind=http`: the same rewards, judge metrics and trained policy.
- The dry run of a policy_rl whose judge is a server prices no GRM and no judging phase.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file, save_file

from grlhfv_jax import config as config_schema
from grlhfv_jax import dry_run, main, roles, serve
from grlhfv_jax.metrics import read_jsonl
from grlhfv_jax.stages import policy_rl
from test_paper_configs import ROOT, load  # tests/ is on sys.path

BONUS = 0.5  # finishing_policy's EOS bonus: about 3 in 4 answers end within the demo's 24 tokens
# the short demo's policy_rl with fewer prompts and answers per step (8 x 5 took 235 s here, 4 x 3: CI time)
SHAPE = dict(prompts_per_step=4, n=3)
KEY_ENV = "GRLHFV_TEST_STAGE2_KEY"


def _rewrite(src: str, dst: str, change) -> str:
    """The HF folder `src` copied to `dst` with its own LM head (untied: a copy of the embedding)
    and `change(weights, config)` applied to its hub-named numpy weights."""
    shutil.copytree(src, dst)
    weights = load_file(os.path.join(src, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config["tie_word_embeddings"] = False
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].copy()
    change(weights, config)
    save_file(weights, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dst


def _layers_never_write(weights, dims):
    """Zero what each decoder layer adds to the residual stream in `dims` (hub layout [out, in])."""
    for name, w in weights.items():
        if name.startswith("model.layers.") and name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            w[dims, :] = 0.0
    weights["model.norm.weight"][dims] = 1.0


def judging_grm(src: str, dst: str, enc, eos_id: int, chain_dims: int = 16, margin: float = 300.0) -> str:
    """The GRM of `src` made to write a judgment that parses (the smoke run's GRM, two steps from
    random, never does): as tests/test_serve.py's judging model, a bigram chain "\\n" -> "\\boxed{"
    -> first score (1-4) -> "," -> second score (6-9) -> "}" -> EOS in embedding / head dims
    [0, chain_dims), which the layers never write; the score among the four: the model's own logits
    (Response 2 always wins). The judge prompt ends with "\\n" (the chat template's assistant header),
    so greedy judging starts the chain at once."""
    box, first, second = enc("\\boxed{"), [enc(str(d))[0] for d in (1, 2, 3, 4)], [enc(str(d))[0] for d in (6, 7, 8, 9)]
    states = [[enc("\n")[-1]]] + [[t] for t in box] + [first, enc(","), second, enc("}")]
    succ = [[t] for t in box] + [first, enc(","), second, enc("}"), [eos_id]]
    assert len({t for toks in states for t in toks} | {eos_id}) == 1 + len(box) + 11 and len(states) <= chain_dims

    def change(weights, config):
        emb, head, chain = weights["model.embed_tokens.weight"], weights["lm_head.weight"], slice(0, chain_dims)
        emb[:, chain], head[:, chain] = 0.0, 0.0
        for k, (toks, nxt) in enumerate(zip(states, succ)):
            emb[toks, k] = 1.0
            head[nxt, k] = margin
        _layers_never_write(weights, chain)

    return _rewrite(src, dst, change)


def finishing_policy(src: str, dst: str, eos_id: int, bonus: float) -> str:
    """The policy of `src` made to end its answers: embedding dim 0 holds 1 for every token and the
    layers never write it, so the head's EOS row there adds `bonus` / rms(hidden) to EOS's logit at
    every answer position (the other tokens' logits: the model's own)."""

    def change(weights, config):
        emb, head = weights["model.embed_tokens.weight"], weights["lm_head.weight"]
        emb[:, 0], head[:, 0] = 1.0, 0.0
        head[eos_id, 0] = bonus
        _layers_never_write(weights, slice(0, 1))

    return _rewrite(src, dst, change)


def _inputs_of(smoke: str, workdir, codec, judge: bool) -> str:
    """A workdir with what policy_rl reads of the smoke run: the world and its tokenizer (links), its
    SFT policy made to end answers, and (`judge`) its stage-1 GRM made to write judgments that parse."""
    os.makedirs(workdir)
    for name in ("data_paths.json", "data"):
        os.symlink(os.path.join(smoke, name), os.path.join(workdir, name))
    finishing_policy(os.path.join(smoke, "sft", "policy"), os.path.join(workdir, "sft", "policy"), codec.eos_id, BONUS)
    if judge:
        judging_grm(
            os.path.join(smoke, "grm_rl", "grm"),
            os.path.join(workdir, "grm_rl", "grm"),
            lambda text: codec.tokenizer.encode(text, add_special_tokens=False),
            codec.eos_id,
        )
    return str(workdir)


def _rows(workdir: str) -> list[dict]:
    return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["stage"] == "policy_rl"]


def test_policy_rl_with_the_grm_served_over_http_equals_in_process(smoke_run, tmp_path):
    """The short demo's policy_rl (2 steps, here of 4 prompts x 3 answers, both orders of each pair
    judged greedily, win-rate rewards) in process (judge.kind 'grm') and from the command line with
    `--config.policy_rl.judge.kind=http` at `python -m grlhfv_jax.serve` serving the same GRM folder
    on loopback with an API key (the HTTP run's workdir holds no GRM: it loads none). Same seeds,
    same mesh (8 CPU devices): every step's rewards, judge diagnostics, oracle scores and losses,
    and the exported policy, are equal. The smoke run's 2-step models never end an answer or write
    a parseable judgment, so the test plants both (finishing_policy, judging_grm): about 3 in 4
    answers end, every judgment parses (Response 2 always wins, so the rewards follow which answers
    ended more than what they say: that the served prompt is the in-process one token for token and
    pixel for pixel is tests/test_serve.py's check, on a judge whose scores read the prompt)."""
    config, smoke, _ = smoke_run
    codec = roles.codec(config_schema.validate(config), smoke)
    local_dir = _inputs_of(smoke, tmp_path / "grm", codec, judge=True)
    http_dir = _inputs_of(smoke, tmp_path / "http", codec, judge=False)
    key = "sk-stage2-test-" + os.urandom(8).hex()
    log_path = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OPENAI_API_KEY", None)
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "grlhfv_jax.serve",
                "--model",
                os.path.join(local_dir, "grm_rl", "grm"),
                "--port",
                "0",
                "--served-model-name",
                "stage1-grm",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=dict(env, **{serve.API_KEY_ENV: key}),
        )
    try:
        run = config.copy_and_resolve_references()  # the in-process judge, while the server starts
        run.stages, run.report.enabled = ("policy_rl",), False
        run.policy_rl.update(SHAPE)
        assert run.policy_rl.judge_temperature == 0.0  # greedy judging; judge.kind: 'grm', the default
        main.run(run, local_dir)
        deadline = time.time() + 300
        while "[serve]" not in log_path.read_text() and server.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        line = [x for x in log_path.read_text().splitlines() if x.startswith("[serve]")]
        assert line and "auth: Bearer $" + serve.API_KEY_ENV in line[0], log_path.read_text()[-3000:]
        url = line[0].split(" at ", 1)[1].split("/v1", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "grlhfv_jax.main",
                "--config",
                "configs/demo.py:smoke",
                "--workdir",
                http_dir,
                "--config.stages=('policy_rl',)",
                "--config.report.enabled=false",
                "--config.policy_rl.judge.kind=http",
                f"--config.policy_rl.judge.base_url={url}",
                "--config.policy_rl.judge.model=stage1-grm",
                f"--config.policy_rl.judge.api_key_env={KEY_ENV}",
                "--config.policy_rl.judge.max_retries=0",
            ]
            + [f"--config.policy_rl.{k}={v}" for k, v in SHAPE.items()],
            cwd=ROOT,
            env=dict(env, **{KEY_ENV: key}),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=60)
    served = log_path.read_text()
    assert " 401 " not in served and key not in served + cli.stdout + cli.stderr
    local, http = _rows(local_dir), _rows(http_dir)
    assert [r["step"] for r in local] == [r["step"] for r in http] == [1, 2]
    compared = sorted(k for k in local[0] if k != "time" and not k.startswith("time/"))  # all but the clocks
    assert {
        "reward/mean",
        "reward/std",
        "judge/parse_failure_rate",
        "judge/position_consistency",
        "oracle/mean",
        "loss",
    } <= set(compared), compared
    for a, b in zip(local, http):
        assert sorted(k for k in b if k != "time" and not k.startswith("time/")) == compared
        assert {k: a[k] for k in compared} == {k: b[k] for k in compared}, (a["step"], a, b)
    # judged: every judgment parsed (a failed request would count as unparsed), the rewards not all alike
    assert all(r["judge/parse_failure_rate"] == 0 and r["reward/std"] > 0 for r in local), local
    assert served.count("POST /v1/chat/completions") >= 8, served[-2000:]  # pairs of complete answers
    p_local, p_http = (
        load_file(os.path.join(d, "policy_rl", "policy", "model.safetensors")) for d in (local_dir, http_dir)
    )
    sft = load_file(os.path.join(local_dir, "sft", "policy", "model.safetensors"))
    assert p_local.keys() == p_http.keys() == sft.keys()
    for name in p_local:
        np.testing.assert_array_equal(p_local[name], p_http[name], err_msg=name)
    assert any(not np.array_equal(p_local[k], sft[k]) for k in p_local)  # two steps trained it


def test_dry_run_of_an_http_judge_holds_no_grm_and_no_judging_phase():
    c = load(os.path.join(ROOT, "configs", "paper", "policy_qwen25vl_7b.py")).get_config("1gpu")
    in_process = config_schema.validate(c)
    c.policy_rl.judge = dict(kind="http", base_url="http://10.0.0.7:8000", model="grm")
    served = config_schema.validate(c)
    (mem_local,), (mem_http,) = (
        policy_rl.memory_phases(in_process, "policy_rl"),
        policy_rl.memory_phases(served, "policy_rl"),
    )
    assert [m.role for m in mem_local.held] == ["policy", "policy", "grm"]
    assert [m.role for m in mem_http.held] == ["policy", "policy"]
    assert any(p.name.startswith("judging") for p in mem_local.phases)
    assert not any(p.name.startswith("judging") or p.model.role == "grm" for p in mem_http.phases)
    assert [p.name for p in mem_http.phases] == [p.name for p in mem_local.phases if not p.name.startswith("judging")]
    local, http = dry_run.plan_stage(in_process, "policy_rl"), dry_run.plan_stage(served, "policy_rl")
    grm = dry_run.model_shape(in_process.model.grm, False, None, where="config.model.grm")
    # 1gpu: one device, parameters unsharded; the two models are both Qwen2.5-VL-7B
    assert local.per_device["params"] - http.per_device["params"] == grm.params * grm.param_bytes > 0
    assert http.per_device["gradients"] == local.per_device["gradients"]
    assert http.per_device["activations"] <= local.per_device["activations"]
    assert any("judge over HTTP (http://10.0.0.7:8000" in n for n in http.notes)
    assert not any("judging" in n for n in http.notes)
