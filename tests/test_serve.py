"""grlhfv_jax.serve: our engine behind /v1/chat/completions, judged through rollout.http_judge.HTTPJudge.

A tiny GRM folder (grlhfv_jax.export.write_folder) whose greedy judgments parse and depend on what it
is shown: random O(0.3) weights, then the first 16 residual dimensions hold a hand-made bigram chain
"\\n" -> "\\boxed{" -> first score (1-4) -> "," -> second score (6-9) -> "}" -> <|im_end|>, which the
layers never write to; the scores are picked by the other 16 dimensions, which the layers compute
from the prompt (image, question, responses). So served == in-process is a check of every token of
the prompt, the image's pixels and the engine, and stage 2's rewards through it are not all alike.

Served one at a time on 127.0.0.1, port 0, in a thread of this process.
"""

import json
import os
import threading
import types
import urllib.error
import urllib.request

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import tiny_models as tm  # noqa: E402  (tests/ is on sys.path)
from grlhfv_jax import encoding, export, models, roles, serve  # noqa: E402
from grlhfv_jax.config import ConfigError  # noqa: E402
from grlhfv_jax.data.tokenizer import train_tokenizer  # noqa: E402
from grlhfv_jax.rl import grm_reward  # noqa: E402
from grlhfv_jax.rollout import (
    SamplingParams,  # noqa: E402
    grm_judge,
)
from grlhfv_jax.rollout.http_judge import HTTPJudge, image_data_url  # noqa: E402
from grlhfv_jax.trainers import rewards as trainer_rewards

CORPUS, IMAGE = list(tm.SHAPES_CORPUS), dict(tm.IMAGE_SETTINGS)  # copies: each module its own
TEMPLATE = "Judge.\n<image>{question}\n# 1: {response_1}\n# 2: {response_2}\nScores: \\boxed{{x, x}}."
NAME = "tiny-grm"
NEW = 16


def tiny_hf(hidden=32, layers=2, heads=2, kv_heads=1):
    return tm.tiny_hf_dict(hidden, layers, heads, kv_heads, tie=False, max_positions=1024)


def judging_model(model, codec, seed=0, chain_dims=16, margin=100.0):
    """Random O(0.3) weights, then the bigram chain of the module doc in dims [0, chain_dims)."""
    rng = np.random.default_rng(seed)
    tm.spread(model, rng)
    enc = lambda s: codec.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    box, first, second = enc("\\boxed{"), [enc(str(d))[0] for d in (1, 2, 3, 4)], [enc(str(d))[0] for d in (6, 7, 8, 9)]
    assert len(set(box)) == len(box) == 7 and len(set(first + second + box + enc(",") + enc("}"))) == 17
    # states (dims of S1): each is the last token's; successors: the tokens its state predicts
    states = [[enc("\n")[-1]]] + [[t] for t in box] + [first, enc(","), second, enc("}")]
    succ = [[t] for t in box] + [first, enc(","), second, enc("}"), [codec.eos_id]]
    assert len(states) == len(succ) <= chain_dims
    S1 = slice(0, chain_dims)
    emb = np.array(model.model.embed_tokens.weight.get_value())
    head = np.zeros_like(np.array(model.lm_head.kernel.get_value()))  # [H, V]
    emb[:, S1] = 0.0
    for k, (toks, nxt) in enumerate(zip(states, succ)):
        for t in toks:
            emb[t, k] = 1.0
        for t in nxt:
            head[k, t] = margin
    for t in first + second:  # which score: read from the dims the layers write (the prompt's content)
        head[chain_dims:, t] = rng.standard_normal(head.shape[0] - chain_dims)
    model.model.embed_tokens.weight.set_value(jax.numpy.asarray(emb))
    model.lm_head.kernel.set_value(jax.numpy.asarray(head))
    model.model.norm.weight.set_value(jax.numpy.ones_like(model.model.norm.weight.get_value()))
    for layer in model.model.layers:  # the layers never write the chain's dims
        for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
            k = np.array(lin.kernel.get_value())
            k[:, S1] = 0.0
            lin.kernel.set_value(jax.numpy.asarray(k))
    return model


def image(seed, h=60, w=90):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def grm(tmp_path_factory):
    """(folder, codec of the run, in-process GRMJudge on the folder's weights, server URL, the served ChatModel)."""
    root = tmp_path_factory.mktemp("serve")
    tok_dir, _ = train_tokenizer(CORPUS, str(root / "tokenizer"), vocab_size=320)
    codec = encoding.Codec.from_dirs(tok_dir, IMAGE, TEMPLATE)
    spec = types.SimpleNamespace(hf_config=tiny_hf())
    model = judging_model(models.from_config(roles.model_config(spec, codec), rngs=nnx.Rngs(0)), codec)
    folder = export.write_folder(model, str(root / "grm"), codec)
    chat = serve.ChatModel(folder, name=NAME, default_max_tokens=NEW)
    server = serve.make_server(chat, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    in_process = grm_judge.GRMJudge(models.load_pretrained(folder), codec, rows=4, max_len=0, max_prompts=4)
    yield folder, codec, in_process, url, chat
    server.shutdown()
    server.server_close()


def post(url, body, headers=None, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


ITEMS = [
    ("What colour is the shape?", image(0), "It is red.", "The square is blue."),
    ("Which one is bigger?", image(1, 40, 120), "The circle.", "The square is bigger, the circle is green."),
    ("Describe the image.", image(2, 90, 50), "A shape.", "It is a red circle."),
    ("Is it green?", image(3), "Yes.", "No, it is blue and red."),
]


def test_served_greedy_judgments_equal_in_process(grm):
    folder, codec, in_process, url, chat = grm
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0.0)
    client = HTTPJudge(url, NAME, template=TEMPLATE, max_retries=0, api_key_env="GRLHFV_TEST_NO_KEY")
    for q, img, a, b in ITEMS:  # the server's prompt: the in-process tokens and pixels exactly
        served_ex = chat.encode(client.messages(q, img, a, b)[0])
        ex = codec.grm_example(q, img, a, b)
        np.testing.assert_array_equal(served_ex["input_ids"], ex["input_ids"])
        np.testing.assert_array_equal(served_ex["pixel_values"], ex["pixel_values"])
        np.testing.assert_array_equal(served_ex["image_grid_thw"], ex["image_grid_thw"])
    mine = in_process.judge(ITEMS, greedy)
    served = client.judge(ITEMS, greedy)
    assert served == mine and client.stats["failures"] == 0
    scores = [grm_reward.pair_scores(t) for t in mine]
    assert all(s is not None for s in scores), mine  # the chain parses ...
    assert len(set(scores)) > 1, scores  # ... and reads the prompt
    # judge_groups: the in-process shared-prefix path == the server's full prompts
    groups = [(q, img, [(a, b), (b, a), (a, "It is.")]) for q, img, a, b in ITEMS[:3]]
    assert client.judge_groups(groups, greedy) == in_process.judge_groups(groups, greedy)


def test_policy_rl_rewards_http_equal_in_process(grm, tmp_path):
    """stage 2's judging step (trainer_rewards.judge_groups) with the judge its config builds
    (roles.make_judge): kind='http' at the server == kind='grm' in process, greedy."""
    folder, codec, _, url, _ = grm
    sec = types.SimpleNamespace(
        pairs="both", num_pairs=None, judge_max_new_tokens=NEW, judge_temperature=0.0, aggregator="mean"
    )
    recs = [{"question": q, "image": img} for q, img, _, _ in ITEMS[:2]]
    texts = ["It is red.", "It is blue.", "The circle is green.", "A square.", "It is.", "No."]
    complete = np.array([[True, True, True], [True, False, True]])
    from grlhfv_jax import config as C

    local = roles.make_judge(
        C.typed_section(C.sections.JUDGE, {"kind": "grm"}), codec=codec, load_grm=lambda: models.load_pretrained(folder)
    )
    remote = roles.make_judge(
        C.typed_section(
            C.sections.JUDGE,
            {
                "kind": "http",
                "base_url": url,
                "model": NAME,
                "max_retries": 0,
                "cache_dir": "judge_cache",
                "api_key_env": "GRLHFV_TEST_NO_KEY",
            },
        ),
        codec=codec,
        load_grm=lambda: pytest.fail("kind='http' loads no model"),
        workdir=str(tmp_path),
    )
    assert isinstance(local, grm_judge.GRMJudge) and isinstance(remote, HTTPJudge)
    r_local, j_local = trainer_rewards.judge_groups(local, sec, recs, texts, complete, seed=7)
    r_remote, j_remote = trainer_rewards.judge_groups(remote, sec, recs, texts, complete, seed=7)
    assert j_remote == j_local and all(s is not None for j in j_local for s in j.values())
    np.testing.assert_array_equal(r_remote, r_local)
    assert r_local[1, 1] == 0 and len(set(r_local[complete].tolist())) > 1, r_local
    assert remote.stats["failures"] == 0 and os.path.isfile(tmp_path / "judge_cache" / "http_judge_cache.jsonl")


def test_judge_config_keys():
    from grlhfv_jax import config as C

    C.check({"policy_rl": {"judge": {"kind": "http", "base_url": "http://h:1", "model": "m"}}})
    with pytest.raises(ConfigError, match=r"config\.policy_rl\.judge\.base_ur: unknown key; did you mean 'base_url'"):
        C.check({"policy_rl": {"judge": {"base_ur": "http://h:1"}}})
    with pytest.raises(ConfigError, match=r"config\.policy_rl\.judge\.timeout_s"):
        C.check({"policy_rl": {"judge": {"timeout_s": "slow"}}})
    assert C.lookup_key("policy_rl_rm.judge.kind").default == "grm"
    assert "policy_rl.judge.max_concurrency" in C.describe("policy_rl")
    assert C.typed_section(C.sections.JUDGE, {}, "policy_rl.judge").kind == "grm"  # the in-process GRM
    for judge, key in (
        ({"kind": "vllm"}, "kind"),
        ({"kind": "http", "model": "m"}, "base_url"),
        ({"kind": "http", "base_url": "http://h:1"}, "model"),
        ({"kind": "http", "base_url": "h:1", "model": "m"}, "base_url"),
        ({"kind": "http", "base_url": "http://h:1", "model": "m", "max_concurrency": 0}, "max_concurrency"),
    ):
        with pytest.raises(ConfigError, match=rf"config\.policy_rl\.judge\.{key}"):
            C.typed_section(C.sections.JUDGE, judge, "policy_rl.judge")


def test_non_loopback_host_needs_the_key(grm, monkeypatch, capsys):
    folder, _, _, _, _ = grm
    monkeypatch.delenv(serve.API_KEY_ENV, raising=False)
    assert serve.main(["--model", folder, "--host", "0.0.0.0", "--port", "0"]) == 2  # before loading anything
    assert serve.API_KEY_ENV in capsys.readouterr().err
    with pytest.raises(ValueError, match=serve.API_KEY_ENV):
        serve.make_server(object(), "0.0.0.0", 0)


def test_command_line_serves(grm):
    """`python -m grlhfv_jax.serve --model DIR --port 0` in a subprocess: prints its address, serves
    /v1/models and a greedy judgment equal to the in-process one; stopped by SIGTERM."""
    import select
    import subprocess
    import sys
    import time

    folder, _, in_process, _, _ = grm
    env = {k: v for k, v in os.environ.items() if k != serve.API_KEY_ENV}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "grlhfv_jax.serve",
            "--model",
            folder,
            "--port",
            "0",
            "--served-model-name",
            NAME,
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        line, deadline = "", time.time() + 120
        while "[serve]" not in line and time.time() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
        assert "[serve]" in line, line
        url = line.split(" at ", 1)[1].split("/v1", 1)[0]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url + "/v1/models", timeout=60) as r:
            assert json.loads(r.read())["data"][0]["id"] == NAME
        greedy = SamplingParams(max_new_tokens=NEW, temperature=0.0)
        client = HTTPJudge(url, NAME, template=TEMPLATE, max_retries=0, api_key_env="GRLHFV_TEST_NO_KEY")
        assert client.judge(ITEMS[:1], greedy) == in_process.judge(ITEMS[:1], greedy)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_key_checked_and_never_logged(monkeypatch, capsys):
    secret = "sk-test-0123456789"
    monkeypatch.setenv("GRLHFV_TEST_KEY", secret)
    chat = serve.ChatModel.__new__(serve.ChatModel)  # the routes and the key check only: no model needed
    chat.name, chat.created = NAME, 0
    server = serve.make_server(chat, "127.0.0.1", 0, api_key_env="GRLHFV_TEST_KEY")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:

        def get(path, key=None):
            req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
            try:
                with opener.open(req, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert get("/health")[0] == 200
        assert get("/v1/models")[0] == 401 and get("/v1/models", "wrong")[0] == 401
        status, body = get("/v1/models", secret)
        assert status == 200 and body["data"][0]["id"] == NAME
        assert post(url, {"messages": []}, headers={"Authorization": "Bearer wrong"})[0] == 401
    finally:
        server.shutdown()
        server.server_close()
    out = capsys.readouterr()
    assert secret not in out.err + out.out


def user(*parts):
    return {"messages": [{"role": "user", "content": list(parts)}]}


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def test_malformed_requests_get_400_and_the_server_goes_on(grm):
    _, _, _, url, _ = grm
    good = {
        "model": NAME,
        "max_tokens": 4,
        "temperature": 0,
        **user(image_part(image_data_url(image(0))), {"type": "text", "text": "What colour is the shape?"}),
    }
    cases = [
        (None, b"{not json"),
        ({"model": NAME}, None),
        ({"messages": "hi"}, None),
        ([1, 2], None),
        ({"messages": [{"role": "robot", "content": "hi"}]}, None),
        (user(image_part("data:image/png;base64,AAAA")), None),  # base64, not an image
        (user(image_part("data:image/png;base64,@@")), None),  # not base64
        (user(image_part("http://x/a.png")), None),  # not a data URL
        (user({"type": "audio"}), None),
        (user({"type": "text", "text": "<|image_pad|>"}), None),
        ({**good, "temperature": -1}, None),
        ({**good, "n": 0}, None),
        ({**good, "max_tokens": "many"}, None),
        ({**good, "top_k": -2}, None),
        ({**good, "stream": True}, None),
        ({**good, "max_tokens": 5000}, None),
    ]  # 5000: past the context
    for body, raw in cases:
        status, reply = post(url, body, raw=raw)
        assert status == 400 and reply["error"]["message"], (body, reply)
    assert post(url, {**good, "model": "other"})[0] == 404
    status, reply = post(url, {**good, "n": 2, "seed": 3, "temperature": 1.0, "top_k": -1})  # -1: vLLM's off
    assert status == 200 and len(reply["choices"]) == 2
    for c in reply["choices"]:
        assert c["finish_reason"] in ("stop", "length") and isinstance(c["message"]["content"], str)
    u = reply["usage"]
    assert u["prompt_tokens"] > 0 and 0 < u["completion_tokens"] <= 8
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # seeded: the same answers again (top_k -1 and absent alike: off)
    assert post(url, {**good, "n": 2, "seed": 3, "temperature": 1.0})[1]["choices"] == reply["choices"]
    text_only = {
        "max_tokens": 3,
        "temperature": 0,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is it red?"}],
    }
    status, reply = post(url, text_only)
    assert status == 200 and reply["model"] == NAME and reply["usage"]["completion_tokens"] <= 3
