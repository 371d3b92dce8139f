"""A judge behind an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, a hosted API, or
`grlhfv_jax.serve`), implementing the `rollout.Judge` protocol with the standard library only.

Each item (question, image, response_1, response_2) becomes one POST to
``{base_url}/v1/chat/completions``: one user message holding the GRM prompt (the paper's template,
`rl.grm_reward.build_grm_prompt`) with the image, as a ``data:image/png;base64,...`` URL, where the
template has ``<image>``; sampling from `SamplingParams` (``n`` = num_samples, ``temperature``,
``top_p``, ``max_tokens`` = max_new_tokens, ``seed``, and ``top_k`` only when > 0, a vLLM/SGLang
extension). The reply's ``choices[k].message.content`` are the judgment texts.

Reliability (all counted in `stats`):
- up to `max_concurrency` requests in flight (a thread pool per call);
- `timeout_s` per socket operation (connect, each read: urllib's timeout);
- retries with exponential backoff and jitter: attempt a (0-based) that failed waits
  ``d/2 + U(0, d/2)`` with ``d = min(backoff_max_s, backoff_s * 2**a)``, or the server's
  ``Retry-After`` (seconds; capped at `retry_after_max_s`) when it sends one. Retried: timeouts,
  connection errors, 408, 429, 5xx, and a 200 whose body is not the JSON expected (malformed, truncated,
  no ``choices``, not ``n`` string contents). Not retried: other 4xx (the item fails);
  401 / 403 / 404 raise `HTTPJudgeError` (a wrong key, URL or model fails every item alike);
- an item still failing after `max_retries` retries is a failure: its texts are ``None`` (what
  `rl.grm_reward.pair_scores` reads as "no two scores": the stage drops that judgment and counts
  it; `grm_accuracy` counts it as a parse failure), ``stats["failures"]`` grows, its record
  carries the error. A failure is never cached, so a rerun asks again.

Cache: ``{cache_dir}/http_judge_cache.jsonl``, one line per answered request, keyed by the SHA-256
of (model, messages with every image replaced by the SHA-256 of its encoded bytes, sampling
parameters; not the URL: another server of the same model shares it). Identical requests in one
call are sent once (so two identical prompts sampled with one seed get one answer, as a seeded
server would give them anyway). A rerun over the same cache sends nothing for what was answered.
A torn last line (a crash mid-write) is skipped on load. `first_row` / `total_rows` of
`SamplingParams` (the engine's bookkeeping of one draw over many calls) are not sent: a server
draws per request, from its prompt and `seed`.

Records: every call leaves one dict per item in `last_records` (and passes it to `on_record`):
the model, base_url, the sampling parameters sent, the texts, whether it came from the cache,
attempts and the last error. The API key is read from the environment variable `api_key_env` at
request time and never stored in a record, a log line or the object's repr.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from grlhfv_jax.rl import grm_reward
from grlhfv_jax.rollout.protocol import SamplingParams

CACHE_FILE = "http_judge_cache.jsonl"


class HTTPJudgeError(RuntimeError):
    """A configuration error the server reports for every request (401, 403, 404)."""


class _Retryable(Exception):
    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


class _Fatal(Exception):
    """This item fails without a retry (a 4xx other than 401/403/404/408/429)."""


# ------------------------------------------------------------------------------------- images


def encode_png(image) -> bytes:
    """uint8 [H, W, 3] (or [H, W] gray, [H, W, 4] RGBA) -> PNG bytes (PIL, deterministic for equal pixels)."""
    import io

    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"encode_png: expected uint8 pixels, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or 0 in a.shape:
        raise ValueError(f"encode_png: expected [H, W, 3|4] pixels, got shape {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a), "RGBA" if a.shape[2] == 4 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def image_data_url(image) -> str:
    """A data URL of an image: pixels (uint8 array, PIL image) -> PNG; encoded bytes (PNG, JPEG,
    GIF, WebP) or a file path -> sent as they are, the MIME type sniffed from the first bytes."""
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            image = f.read()
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image (palette, gray, ...) -> RGB
        image = np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        mime = (
            "image/png"
            if data.startswith(b"\x89PNG")
            else "image/jpeg"
            if data.startswith(b"\xff\xd8")
            else "image/gif"
            if data.startswith(b"GIF8")
            else "image/webp"
            if data[8:12] == b"WEBP"
            else "application/octet-stream"
        )
    else:
        data, mime = encode_png(image), "image/png"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------------------- client


class HTTPJudge:
    """The GRM (or any judge model) behind ``{base_url}/v1/chat/completions``; see the module doc.

    stats: requests (HTTP requests sent, retries included), retries, failures (items that failed
    after the last retry or with a non-retried error), cache_hits (items answered from the cache)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        retry_after_max_s: float = 300.0,
        cache_dir: str | None = None,
        template: str = grm_reward.GRM_TEMPLATE,
        system_prompt: str | None = None,
        on_record: Callable[[dict], Any] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        rng: random.Random | None = None,
    ):
        if int(max_concurrency) < 1 or int(max_retries) < 0 or float(timeout_s) <= 0:
            raise ValueError("HTTPJudge: max_concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.url = self.base_url + "/v1/chat/completions"
        self.api_key_env = api_key_env
        self.max_concurrency, self.timeout_s, self.max_retries = (
            int(max_concurrency),
            float(timeout_s),
            int(max_retries),
        )
        self.backoff_s, self.backoff_max_s, self.retry_after_max_s = (
            float(backoff_s),
            float(backoff_max_s),
            float(retry_after_max_s),
        )
        self.template, self.system_prompt, self.on_record = template, system_prompt, on_record
        self._sleep, self._rng = sleep, rng or random.Random()
        self._lock = threading.Lock()
        # a server on this machine is reached directly, whatever proxy the environment names
        loopback = urllib.parse.urlsplit(self.base_url).hostname in ("127.0.0.1", "localhost", "::1")
        self._open = (
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open if loopback else urllib.request.urlopen
        )
        self.stats = {"requests": 0, "retries": 0, "failures": 0, "cache_hits": 0}
        self.last_records: list[dict] = []
        self._cache: dict[str, list[str]] = {}
        self._cache_path = None
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            self._cache_path = os.path.join(cache_dir, CACHE_FILE)
            self._cache = _load_cache(self._cache_path)

    def __repr__(self) -> str:
        return f"HTTPJudge(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    # ---------------------------------------------------------------------------- the protocol

    def judge(self, items: Sequence[tuple], params: SamplingParams) -> list[str | None]:
        """items: (question, image, response_1, response_2); num_samples texts per item, item-major,
        in order; ``None`` for each text of an item that failed (counted in stats["failures"])."""
        n = int(params.num_samples)
        sampling = self.sampling_body(params)
        requests, urls = [], {}  # urls: each image object encoded once per call (a group's pairs share it)
        for q, img, r1, r2 in items:
            messages, hashed = self.messages(q, img, r1, r2, _urls=urls)
            requests.append((messages, _key(self.model, hashed, sampling)))
        results = self._run(requests, sampling, n)
        return [t for texts in results for t in texts]

    def judge_groups(self, groups: Sequence[tuple], params: SamplingParams) -> list[list[str | None]]:
        """groups: (question, image, [(response_1, response_2), ...]); one text per pair (None: failed)."""
        if params.num_samples != 1:
            raise ValueError("HTTPJudge.judge_groups samples one judgment per pair (num_samples = 1)")
        items = [(q, img, a, b) for q, img, pairs in groups for a, b in pairs]
        flat = self.judge(items, params)
        out, k = [], 0
        for _, _, pairs in groups:
            out.append(flat[k : k + len(pairs)])
            k += len(pairs)
        return out

    def complete(self, conversations: Sequence[list], params: SamplingParams) -> list[str | None]:
        """Any chat: each conversation (OpenAI messages; an image part's URL a data URL) is one request
        (the policy benchmarks' judge prompts); num_samples texts per conversation, in order; ``None``
        for each text of a failed one. Same retries, cache (images keyed by hash) and records as `judge`."""
        n = int(params.num_samples)
        sampling = self.sampling_body(params)
        requests = [(list(msgs), _key(self.model, _hashed(msgs), sampling)) for msgs in conversations]
        return [t for texts in self._run(requests, sampling, n) for t in texts]

    # -------------------------------------------------------------------------------- requests

    @staticmethod
    def sampling_body(params: SamplingParams) -> dict:
        body = {
            "n": int(params.num_samples),
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
            "max_tokens": int(params.max_new_tokens),
            "seed": int(params.seed),
        }
        if params.top_k:
            body["top_k"] = int(params.top_k)
        return body

    def messages(
        self, question: str, image, response_1: str, response_2: str, _urls: dict | None = None
    ) -> tuple[list, list]:
        """(messages to send, the same with each image's data URL replaced by its SHA-256: the cache
        key's). The image goes where the template has ``<image>``; no image: text only."""
        text = grm_reward.build_grm_prompt(question, response_1, response_2, template=self.template)
        before, after = grm_reward.split_at_image(text)
        if image is None:
            parts = [before + after]
        else:
            urls = {} if _urls is None else _urls
            if id(image) not in urls:
                urls[id(image)] = (image, image_data_url(image))  # the object kept: its id stays unique
            parts = [before, urls[id(image)][1], after]
        content, hashed = [], []
        for k, part in enumerate(parts):
            if k == 1:
                content.append({"type": "image_url", "image_url": {"url": part}})
                hashed.append({"type": "image_url", "sha256": hashlib.sha256(part.encode("ascii")).hexdigest()})
            elif part:
                content.append({"type": "text", "text": part})
                hashed.append(content[-1])
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return head + [{"role": "user", "content": content}], head + [{"role": "user", "content": hashed}]

    def _run(self, requests: list[tuple], sampling: dict, n: int) -> list[list[str | None]]:
        todo: dict[str, list] = {}  # key -> messages: keys not cached, each sent once
        for messages, key in requests:
            if key not in self._cache and key not in todo:
                todo[key] = messages
        answers: dict[str, tuple] = {}  # key -> (texts or None, attempts, last error)
        if todo:
            pool = concurrent.futures.ThreadPoolExecutor(min(self.max_concurrency, len(todo)))
            try:
                futs = {key: pool.submit(self._request, msgs, sampling, n) for key, msgs in todo.items()}
                answers = {key: fut.result() for key, fut in futs.items()}
            finally:  # an HTTPJudgeError: requests not yet started are not sent
                pool.shutdown(wait=True, cancel_futures=True)
        out, records = [], []
        for _, key in requests:
            if key in answers:
                texts, attempts, error = answers[key]
                cached = False
                if texts is None:
                    self.stats["failures"] += 1
                elif key not in self._cache:
                    self._store(key, texts)
            else:
                texts, attempts, error, cached = self._cache[key], 0, None, True
                self.stats["cache_hits"] += 1
            texts = list(texts) if texts is not None else [None] * n
            out.append(texts)
            rec = {
                "key": key,
                "model": self.model,
                "base_url": self.base_url,
                "params": dict(sampling),
                "texts": texts,
                "cached": cached,
                "attempts": attempts,
                "error": error,
            }
            records.append(rec)
            if self.on_record is not None:
                self.on_record(rec)
        self.last_records = records
        return out

    def _request(self, messages: list, sampling: dict, n: int) -> tuple[list[str] | None, int, str | None]:
        body = json.dumps({"model": self.model, "messages": messages, **sampling}).encode("utf-8")
        error = None
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.stats["requests"] += 1
                self.stats["retries"] += int(attempt > 0)
            try:
                return self._post_once(body, n), attempt + 1, None
            except _Retryable as e:
                error = str(e)
                if attempt == self.max_retries:
                    break
                self._sleep(self._delay(attempt, e.retry_after))
            except _Fatal as e:
                return None, attempt + 1, str(e)
        return None, self.max_retries + 1, error

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max_s)
        d = min(self.backoff_max_s, self.backoff_s * 2**attempt)
        with self._lock:
            return d / 2 + self._rng.uniform(0, d / 2)

    def _post_once(self, body: bytes, n: int) -> list[str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = "Bearer " + key
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._open(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            status = e.code
            retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            try:
                detail = e.read()[:200].decode("utf-8", "replace")
            except Exception:  # a broken error body says nothing more
                detail = ""
            finally:
                e.close()
            msg = f"HTTP {status} from {self.url}: {detail}"
            if status in (401, 403, 404):
                raise HTTPJudgeError(msg + f" (check base_url, model and ${self.api_key_env})") from None
            if status in (408, 429) or 500 <= status < 600:
                raise _Retryable(msg, retry_after) from None
            raise _Fatal(msg) from None
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        try:
            data = json.loads(raw)
            choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
            texts = [c["message"]["content"] for c in choices]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise _Retryable(f"malformed reply ({type(e).__name__}: {e}): {raw[:120]!r}") from None
        if len(texts) != n or not all(isinstance(t, str) for t in texts):
            raise _Retryable(f"reply has {len(texts)} choices (wanted {n} texts)")
        return texts

    def _store(self, key: str, texts: list[str]) -> None:
        self._cache[key] = list(texts)
        if self._cache_path:
            line = json.dumps({"key": key, "model": self.model, "texts": list(texts)}) + "\n"
            with self._lock, open(self._cache_path, "a", encoding="utf-8") as f:
                f.write(line)


def _hashed(messages: list) -> list:
    """`messages` with each image part's URL replaced by its SHA-256 (the cache key's form)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [
                {"type": "image_url", "sha256": hashlib.sha256(p["image_url"]["url"].encode("utf-8")).hexdigest()}
                if isinstance(p, dict) and p.get("type") == "image_url"
                else p
                for p in content
            ]
        out.append({**m, "content": content})
    return out


def _key(model: str, hashed_messages: list, sampling: dict) -> str:
    blob = json.dumps(
        {"model": model, "messages": hashed_messages, "sampling": sampling}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; None when absent or an HTTP date (then the backoff decides)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _load_cache(path: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                out[rec["key"]] = [str(t) for t in rec["texts"]]
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a crash mid-write
    return out
