"""rollout.http_judge.HTTPJudge against a real chat-completions server on loopback that answers
from the prompt and injects faults on a script (timeout, 500, 429 + Retry-After, malformed JSON,
truncated body, missing choices, slow reply). Backoff sleeps are faked: the suite takes about as
long as its one real timeout."""

import base64
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from grlhfv_jax.rl import grm_reward
from grlhfv_jax.rollout import SamplingParams
from grlhfv_jax.rollout.http_judge import CACHE_FILE, HTTPJudge, HTTPJudgeError, encode_png
from grlhfv_jax.trainers import rewards as trainer_rewards

TIMEOUT = 1.0  # the client's timeout in these tests (s)
PAIR_RE = re.compile(r"# Response 1: (.*)\n# Response 2: (.*)\n")


def score_of(response: str) -> int:
    """The server's verdict on a response: the number after 'r' ('r7 ...' -> 7)."""
    return int(re.match(r"r(\d+)", response).group(1))


class FakeServer:
    """Answers `\\boxed{s1, s2}` with s = score_of(response); `script[response_1]` lists the fault
    of that item's 1st, 2nd, ... request ("ok" after the list ends)."""

    def __init__(self, script=None):
        self.script = dict(script or {})
        self.lock = threading.Lock()
        self.requests, self.attempts, self.bodies, self.auth, self.images = 0, {}, [], [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def handle(self, h, body):
        content = body["messages"][-1]["content"]
        text = "".join(c["text"] for c in content if c["type"] == "text")
        r1, r2 = PAIR_RE.search(text).groups()
        with self.lock:
            self.requests += 1
            k = self.attempts[r1] = self.attempts.get(r1, 0) + 1
            self.bodies.append(body)
            self.auth.append(h.headers.get("Authorization"))
            self.images += [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
        faults = self.script.get(r1, [])
        fault = faults[k - 1] if k <= len(faults) else "ok"
        n = int(body.get("n", 1))
        reply = {
            "model": body["model"],
            "choices": [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": f"Analysis: sample {i}.\nScores: \\boxed{{{score_of(r1)}, {score_of(r2)}}}",
                    },
                }
                for i in reversed(range(n))
            ],
        }  # out of order on purpose: the client sorts by index
        data = json.dumps(reply).encode()
        try:
            if fault == "timeout":
                time.sleep(TIMEOUT * 1.6)
            elif fault == "slow":
                time.sleep(TIMEOUT * 0.3)
            if fault in ("500", "429", "400"):
                h.send_response(int(fault))
                if fault == "429":
                    h.send_header("Retry-After", "7")
                h.send_header("Content-Length", "2")
                h.end_headers()
                h.wfile.write(b"no")
                return
            if fault == "malformed":
                data = b'{"choices": [{"index": 0, "message": '
            elif fault == "no_choices":
                data = json.dumps({"object": "error", "message": "overloaded"}).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data) + (100 if fault == "truncated" else 0)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2] if fault == "truncated" else data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server_factory():
    servers = []

    def make(script=None):
        servers.append(FakeServer(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def make_judge(url, tmp_path, delays, **kw):
    import random

    kw = {
        "max_concurrency": 4,
        "timeout_s": TIMEOUT,
        "max_retries": 3,
        "backoff_s": 1.0,
        "backoff_max_s": 8.0,
        "cache_dir": str(tmp_path / "cache"),
        "api_key_env": "TEST_JUDGE_KEY",
        **kw,
    }
    return HTTPJudge(url, "judge-model", sleep=delays.append, rng=random.Random(0), **kw)


def image(seed):
    return np.random.default_rng(seed).integers(0, 256, (5, 7, 3), dtype=np.uint8)


def decode_data_url(url):
    from PIL import Image

    head, b64 = url.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


GREEDY = SamplingParams(max_new_tokens=64, temperature=0.0, seed=3)


def test_faults_retried_failure_counted_and_cache_serves_a_rerun(server_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    script = {
        "r1 timeout": ["timeout"],
        "r2 e500": ["500", "500"],
        "r3 limited": ["429"],
        "r4 malformed": ["malformed"],
        "r5 truncated": ["truncated"],
        "r6 slow": ["slow"],
        "r7 nochoices": ["no_choices"],
        "r8 dead": ["500"] * 10,
        "r9 fine": [],
    }
    srv = server_factory(script)
    delays = []
    judge = make_judge(srv.url, tmp_path, delays)
    imgs = [image(k) for k in range(len(script))]
    items = [(f"what is in picture {k}?", imgs[k], r1, f"r{(k + 3) % 10} other") for k, r1 in enumerate(script)]
    texts = judge.judge(items, GREEDY)

    # every item but the dead one: the server's verdict, in order
    assert len(texts) == len(items)
    for (q, img, r1, r2), t in zip(items, texts):
        if r1 == "r8 dead":
            assert t is None
            # never turned into a score: the stage reads it as "no two scores" and drops it
            assert grm_reward.pair_scores(t) is None and grm_reward.pair_reward(t, 1) == 0.0
        else:
            assert grm_reward.pair_scores(t) == (score_of(r1), score_of(r2)), (r1, t)
    # retries: timeout 1, 500 x2, 429 1, malformed 1, truncated 1, no choices 1, dead 3 (max_retries)
    assert judge.stats == {"requests": 9 + 10, "retries": 10, "failures": 1, "cache_hits": 0}
    assert srv.requests == 9 + 10
    dead = [r for r in judge.last_records if r["texts"] == [None]]
    assert len(dead) == 1 and dead[0]["attempts"] == 4 and "HTTP 500" in dead[0]["error"]
    # backoff: Retry-After honoured exactly, the rest exponential with jitter in [d/2, d]
    assert delays.count(7.0) == 1
    backoff = sorted(d for d in delays if d != 7.0)
    assert len(backoff) == 9
    assert all(0.5 <= d <= 1.0 for d in backoff[:6]) and 1.0 <= backoff[6] and backoff[-1] <= 4.0
    # images arrive as PNG data URLs with the same pixels; the key rides in the Authorization header
    first = {}
    for body in srv.bodies:
        content = body["messages"][-1]["content"]
        k = int(re.search(r"picture (\d+)", content[-1]["text"]).group(1))
        first.setdefault(k, next(c["image_url"]["url"] for c in content if c["type"] == "image_url"))
        assert body["model"] == "judge-model" and body["n"] == 1 and body["temperature"] == 0.0
        assert body["max_tokens"] == 64 and body["seed"] == 3 and body["top_p"] == 1.0 and "top_k" not in body
    assert sorted(first) == list(range(len(items)))
    for k, url in first.items():
        np.testing.assert_array_equal(decode_data_url(url), imgs[k])
    assert set(srv.auth) == {"Bearer sk-test-123"}
    # the model and parameters go with every result; the key goes nowhere
    for rec in judge.last_records:
        assert rec["model"] == "judge-model" and rec["params"]["max_tokens"] == 64 and not rec["cached"]
    stored = json.dumps(judge.last_records) + (tmp_path / "cache" / CACHE_FILE).read_text() + repr(judge)
    assert "sk-test-123" not in stored

    # a new client on the same cache: what was answered is served from the cache, nothing is sent
    before = srv.requests
    again = make_judge(srv.url, tmp_path, [])
    live = [it for it in items if it[2] != "r8 dead"]
    assert again.judge(live, GREEDY) == [t for t in texts if t is not None]
    assert srv.requests == before
    assert again.stats == {"requests": 0, "retries": 0, "failures": 0, "cache_hits": len(live)}
    assert all(r["cached"] for r in again.last_records)
    # the failure was not cached: asking again sends it again (and it fails again, counted)
    assert again.judge([items[7]], GREEDY) == [None] and srv.requests == before + 4
    assert again.stats["failures"] == 1
    # other sampling parameters are another cache key
    again.judge(live[:1], GREEDY.replace(seed=4))
    assert srv.requests == before + 5


def test_groups_samples_and_duplicates(server_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_JUDGE_KEY", raising=False)
    for var in ("http_proxy", "HTTP_PROXY"):  # a proxy in the environment: loopback is still reached directly
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    srv = server_factory()
    seen = []
    judge = make_judge(srv.url, tmp_path, [], cache_dir=None, on_record=seen.append)
    img = image(0)
    groups = [("q0", img, [("r1 a", "r2 b"), ("r2 b", "r1 a")]), ("q1", None, []), ("q2", img, [("r5 c", "r3 d")])]
    out = judge.judge_groups(groups, GREEDY)
    assert [[grm_reward.pair_scores(t) for t in g] for g in out] == [[(1, 2), (2, 1)], [], [(5, 3)]]
    assert srv.auth == [None] * 3  # no key in the environment: no header
    assert [r["texts"] for r in seen] == [[t] for g in out for t in g]
    # num_samples -> n; choices come back in index order; an identical item is sent once
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=5, num_samples=2, seed=1)
    item = ("q", img, "r4 x", "r6 y")
    texts = judge.judge([item, item], params)
    assert [t.split(".")[0] for t in texts] == ["Analysis: sample 0", "Analysis: sample 1"] * 2
    assert srv.requests == 4 and judge.stats["requests"] == 4
    body = srv.bodies[-1]
    assert (body["n"], body["temperature"], body["top_p"], body["top_k"], body["seed"]) == (2, 1.0, 0.9, 5, 1)
    assert [c["type"] for c in body["messages"][0]["content"]] == ["text", "image_url", "text"]
    # no image: text only, the template's <image> marker gone
    judge.judge([("q", None, "r1 a", "r9 z")], GREEDY)
    content = srv.bodies[-1]["messages"][0]["content"]
    assert len(content) == 1 and content[0]["type"] == "text" and "<image>" not in content[0]["text"]
    assert "#### Conversation Context ####\nq\n" in content[0]["text"]
    with pytest.raises(ValueError, match="num_samples"):
        judge.judge_groups(groups, params)


def test_client_errors_fail_or_raise(server_factory, tmp_path):
    srv = server_factory({"r1 bad": ["400"] * 5})
    judge = make_judge(srv.url, tmp_path, [])
    # a 400 is this item's problem: failed at once, not retried, counted
    assert judge.judge([("q", image(1), "r1 bad", "r2 x")], GREEDY) == [None]
    assert judge.stats == {"requests": 1, "retries": 0, "failures": 1, "cache_hits": 0}
    # a wrong URL (404 from the server) is everyone's problem: raise, naming the key's variable
    wrong = make_judge(srv.url + "/nope", tmp_path, [])
    with pytest.raises(HTTPJudgeError, match="TEST_JUDGE_KEY"):
        wrong.judge([("q", None, "r1 a", "r2 b")], GREEDY)


def test_torn_cache_line_is_skipped(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / CACHE_FILE).write_text(json.dumps({"key": "k1", "model": "m", "texts": ["a"]}) + '\n{"key": "k2", "te')
    judge = HTTPJudge("http://127.0.0.1:9", "m", cache_dir=str(d))
    assert judge._cache == {"k1": ["a"]}


def test_png_encoder_round_trips():
    from PIL import Image

    for shape in ((1, 1, 3), (4, 9, 3), (3, 2, 4)):
        a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        back = np.asarray(Image.open(io.BytesIO(encode_png(a))))
        np.testing.assert_array_equal(back, a)
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2, 3), np.float32))


def test_stage_two_rewards_through_the_http_judge(server_factory, tmp_path):
    """trainers.rewards.judge_groups (stage 2's reward) over the HTTP judge: a failed judgment is
    dropped from the aggregate like an unparsed one (never a score), the rest are the server's."""
    import types

    from grlhfv_jax.rl import grouped

    srv = server_factory({"r9 best": ["500"] * 10})  # every judgment showing "r9 best" first fails
    judge = make_judge(srv.url, tmp_path, [], max_retries=1)
    sec = types.SimpleNamespace(
        pairs="both", num_pairs=None, judge_max_new_tokens=32, judge_temperature=0.0, aggregator="mean"
    )
    texts = ["r9 best", "r4 mid", "r1 low"]
    rewards, judgments = trainer_rewards.judge_groups(
        judge, sec, [{"question": "q", "image": image(0)}], texts, np.ones((1, 3), bool), seed=0
    )
    # (0, j) failed -> None; the others parse to the server's scores
    assert judgments[0][(0, 1)] is None and judgments[0][(0, 2)] is None
    assert judgments[0][(1, 0)] == (4, 9) and judgments[0][(2, 1)] == (1, 4)
    assert judge.stats["failures"] == 2 and judge.stats["retries"] == 2
    # mean over parsed judgments only: 0 got 9, 9 -> 9; 1 got 4, 4, 4 -> 4; 2 got 1, 1, 1 -> 1
    np.testing.assert_allclose(rewards[0], [9, 4, 1])
    np.testing.assert_allclose(rewards[0], grouped.aggregate(3, judgments[0], [True] * 3, "mean"))
    assert grouped.judge_diagnostics(3, judgments[0], [True] * 3)["num_unparsed"] == 2


def test_image_forms(tmp_path):
    from PIL import Image

    from grlhfv_jax.rollout.http_judge import image_data_url

    a = image(5)
    png = encode_png(a)
    assert image_data_url(a) == image_data_url(png) == image_data_url(Image.fromarray(a))
    path = tmp_path / "x.png"
    path.write_bytes(png)
    assert image_data_url(str(path)) == image_data_url(a)
    gray = Image.fromarray(a[:, :, 0], mode="L")
    np.testing.assert_array_equal(decode_data_url(image_data_url(gray)), np.repeat(a[:, :, :1], 3, axis=2))
    assert image_data_url(b"\xff\xd8\xff\xe0rest").startswith("data:image/jpeg;base64,")
