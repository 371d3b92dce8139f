"""A model folder behind an OpenAI-compatible chat-completions endpoint (`python -m grlhfv_jax.serve`).

    python -m grlhfv_jax.serve --model DIR [--port 8000] [--host 127.0.0.1] [--served-model-name NAME]

DIR is a complete Hugging Face folder as every stage and `grlhfv_jax.export` write it: weights,
config.json, the tokenizer with its chat template, preprocessor_config.json. The server runs our
KV-cache engine (`rollout.EngineRollout`) on it, so a trained GRM (or policy) can judge for stage 2
(`config.policy_rl.judge.kind = "http"`), for lmms-eval, or for anyone.

Endpoints:
    POST /v1/chat/completions   OpenAI's request and response (no streaming)
    GET  /v1/models             the one model served
    GET  /health                200 "ok" (no key needed)

A request's `messages` (system / user / assistant; content a string or a list of
``{"type": "text", "text": ...}`` and ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``
parts; images PNG / JPEG / GIF / WebP as base64 data URLs, nothing is fetched) become the model's chat
prompt through the folder's chat template, each image where its part is, and its patches through
the folder's image processor: the same tokens `encoding.Codec` makes in process
(`Codec.grm_example` for the GRM prompt `rollout.http_judge.HTTPJudge` sends), so greedy
judgments served here equal `rollout.grm_judge.GRMJudge`'s. Sampling: `n`, `temperature` (0:
greedy; default 1), `top_p`, `top_k` (vLLM's extension; 0 or -1 = off), `max_tokens` (or
`max_completion_tokens`; default `--max-tokens`), `seed` (default: a fresh random one). Each
request is one engine call of n rows, drawn with key(seed) (`rollout.SamplingParams`): the same
request with the same seed gets the same answers.

Requests are served one at a time under a lock (one engine call each; the HTTP threads queue on
it): a client's concurrency overlaps its transfers and image decoding with our generation, nothing
more (prompts are encoded under a second lock: the tokenizer is shared). Prompts pad to `rollout.bucket_length` (few compiled shapes).

Reply: ``choices[i].message.content`` (special tokens dropped, cut at `<|im_end|>`),
``finish_reason`` ("stop": the model ended its turn; "length": max_tokens reached), ``usage``
(prompt tokens with image tokens expanded, completion tokens, total).

Errors: a malformed request (bad JSON, no `messages`, a bad part, an undecodable image, a bad
sampling value, a prompt longer than the context) gets 400 with OpenAI's error body; a wrong model
name 404; a missing or wrong key 401; the server keeps serving.

Access: on a loopback host (127.0.0.1, localhost, ::1; the default) no key is needed unless
`$GRLHFV_SERVE_API_KEY` (or `--api-key-env`'s variable) is set; on any other host the server
refuses to start without it. With a key every request but /health needs
``Authorization: Bearer <key>``. The key is never logged or echoed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import io
import json
import os
import re
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from grlhfv_jax import encoding
from grlhfv_jax.rollout import group_sampling

API_KEY_ENV = "GRLHFV_SERVE_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 256 << 20
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,", re.S)


class RequestError(Exception):
    """A request the server answers with `status` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = int(status), message, kind


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


# ----------------------------------------------------------------------------- requests -> prompt


def decode_image(url: str) -> np.ndarray:
    """A base64 data URL -> uint8 [H, W, 3] RGB pixels; RequestError(400) when it is not one."""
    from PIL import Image

    if not isinstance(url, str):
        raise _bad("image_url.url must be a string (a data:image/...;base64,... URL)")
    m = _DATA_URL.match(url[:256])
    if not m:
        raise _bad(
            "images must be base64 data URLs (data:image/png;base64,...); the server fetches nothing"
            if not url.startswith("data:")
            else "image data URL is not base64 (data:image/<type>;base64,...)"
        )
    try:
        raw = base64.b64decode(url[m.end() :], validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"image data URL: invalid base64 ({e})") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return np.asarray(im.convert("RGB"), np.uint8)
    except Exception as e:  # PIL raises many kinds on a corrupt / unknown / oversized image
        raise _bad(f"image data URL: cannot decode the image ({type(e).__name__}: {e})") from None


def parse_messages(messages) -> tuple[list[dict], list[np.ndarray]]:
    """OpenAI chat messages -> (messages for the chat template: content a string or a list of
    {"type": "text"} / {"type": "image"} parts, the images in order). RequestError(400) on a bad one."""
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list")
    out, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"messages[{i}] must be an object")
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", "user", "assistant"):
            raise _bad(f"messages[{i}].role must be 'system', 'user' or 'assistant', got {role!r}")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise _bad(f"messages[{i}].content must be a string or a list of parts")
        parts = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise _bad(f"{where}.text must be a string")
                if part["text"]:
                    parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                if role != "user":
                    raise _bad(f"{where}: images belong in user messages")
                ref = part.get("image_url")
                images.append(decode_image(ref.get("url") if isinstance(ref, dict) else ref))
                parts.append({"type": "image"})
            else:
                raise _bad(f"{where}: expected a part of type 'text' or 'image_url', got {kind!r}")
        if role == "system":  # a system turn is text
            out.append({"role": role, "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": role, "content": parts})
    return out, images


def chat_text(messages: list[dict], tokenizer) -> str:
    """The chat prompt of `messages` (from `parse_messages`), ending with the assistant's turn
    opening: the tokenizer's chat template, else `processing.chat_prompt`'s format (Qwen2-VL's);
    one user message gives exactly `processing.chat_prompt`'s text."""
    from grlhfv_jax import processing as P

    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = [] if messages[0]["role"] == "system" else [f"{P.IM_START}system\n{P.DEFAULT_SYSTEM}{P.IM_END}\n"]
    for m in messages:
        c = m["content"]
        text = c if isinstance(c, str) else "".join(P.IMAGE_BLOCK if p["type"] == "image" else p["text"] for p in c)
        turns.append(f"{P.IM_START}{m['role']}\n{text}{P.IM_END}\n")
    return "".join(turns) + f"{P.IM_START}assistant\n"


def _number(body: dict, key: str, default, kind, ok, what: str):
    v = body.get(key, default)
    if v is None:
        v = default
    if kind is int:
        good = isinstance(v, int) and not isinstance(v, bool)
    else:
        good = isinstance(v, (int, float)) and not isinstance(v, bool)
    if not good or not ok(v):
        raise _bad(f"'{key}' must be {what}, got {v!r}")
    return kind(v)


def sampling_params(body: dict, *, default_max_tokens: int):
    """A request's sampling settings -> `rollout.SamplingParams`; RequestError(400) on a bad value."""
    from grlhfv_jax.rollout import SamplingParams

    if body.get("stream"):
        raise _bad("'stream' is not supported")
    max_key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    seed = body.get("seed")
    return SamplingParams(
        max_new_tokens=_number(body, max_key, default_max_tokens, int, lambda v: v >= 1, "an int >= 1"),
        temperature=_number(body, "temperature", 1.0, float, lambda v: v >= 0, "a number >= 0"),
        top_p=_number(body, "top_p", 1.0, float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
        top_k=max(_number(body, "top_k", 0, int, lambda v: v >= -1, "an int >= 0 (0 or -1: off)"), 0),
        num_samples=_number(body, "n", 1, int, lambda v: 1 <= v <= 1024, "an int in [1, 1024]"),
        seed=(int.from_bytes(os.urandom(4), "little") >> 1)
        if seed is None
        else _number(body, "seed", 0, int, lambda v: 0 <= v < 2**63, "an int >= 0"),
    )


# ----------------------------------------------------------------------------- the model


class ChatModel:
    """A model folder on our engine: `complete(request body) -> response body` (thread safe:
    one engine call at a time)."""

    def __init__(
        self,
        model_dir: str,
        *,
        name: str | None = None,
        dtype: str = "float32",
        default_max_tokens: int = 512,
        max_model_len: int | None = None,
    ):
        import jax.numpy as jnp

        from grlhfv_jax import models

        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise FileNotFoundError(f"{model_dir}: no config.json (a stage's output folder or grlhfv_jax.export's)")
        if not os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
            raise FileNotFoundError(
                f"{model_dir}: no preprocessor_config.json: export the folder with "
                "python -m grlhfv_jax.export (it writes the tokenizer and image processor)"
            )
        self.name = name or os.path.basename(os.path.normpath(model_dir))
        self.codec = encoding.Codec.from_dirs(model_dir, {"processor_dir": model_dir})
        self.model = models.load_pretrained(model_dir, dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype])
        self.engine = group_sampling.engine_rollout(self.model, self.codec, frozen=True)
        self.default_max_tokens = int(default_max_tokens)
        self.max_model_len = int(max_model_len or _context_length(model_dir) or 0)  # 0: unchecked
        self.created = int(time.time())
        self._lock = threading.Lock()  # one engine call at a time
        self._encode_lock = threading.Lock()  # the fast tokenizer is not safe to share across threads

    def encode(self, messages) -> dict:
        """Request messages -> one encoded example (`processing.encode_example`)."""
        from grlhfv_jax import processing

        msgs, images = parse_messages(messages)
        try:
            with self._encode_lock:
                text = chat_text(msgs, self.codec.tokenizer)
                return processing.encode_example(self.codec.tokenizer, self.codec.image_processor, text, images)
        except RequestError:
            raise
        except Exception as e:  # a template error, image tokens typed into the text, ...
            raise _bad(f"cannot build the prompt: {type(e).__name__}: {e}") from None

    def complete(self, body) -> dict:
        from grlhfv_jax.rollout import bucket_length

        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        if body.get("model") not in (None, self.name):
            raise RequestError(
                404, f"model {body['model']!r} does not exist (this server serves {self.name!r})", "not_found_error"
            )
        if "messages" not in body:
            raise _bad("'messages' is required")
        params = sampling_params(body, default_max_tokens=self.default_max_tokens)
        ex = self.encode(body["messages"])
        T = len(ex["input_ids"])
        if self.max_model_len and T + params.max_new_tokens > self.max_model_len:
            raise _bad(
                f"the prompt's {T} tokens + max_tokens {params.max_new_tokens} exceed the model's context "
                f"({self.max_model_len} tokens)"
            )
        batch = encoding.batch([ex], self.codec, side="left", max_len=bucket_length(T))
        if not np.asarray(batch["image_grid_thw"]).size:  # text only
            batch = {k: v for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
        with self._lock:
            out = self.engine.generate(batch, params)
            tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
            finished = np.asarray(out.finished)
        texts = self.codec.decode(tokens, lengths)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": t},
                "finish_reason": "stop" if bool(finished[i]) else "length",
                "logprobs": None,
            }
            for i, t in enumerate(texts)
        ]
        completion = int(lengths.sum())
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": {"prompt_tokens": T, "completion_tokens": completion, "total_tokens": T + completion},
        }

    def models_body(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": self.name, "object": "model", "created": self.created, "owned_by": "grlhfv_jax"}],
        }


def _context_length(model_dir: str) -> int | None:
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    for node in (cfg.get("text_config") or {}, cfg):
        if isinstance(node.get("max_position_embeddings"), int):
            return node["max_position_embeddings"]
    return None


# ----------------------------------------------------------------------------- HTTP


def _handler(model: ChatModel, api_key: str | None, quiet: bool):
    class Handler(BaseHTTPRequestHandler):
        server_version = "grlhfv_jax.serve"

        def log_message(self, fmt, *args):  # the request line and status only: never a header
            if not quiet:
                sys.stderr.write(f"[serve] {self.address_string()} {fmt % args}\n")

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: RequestError) -> None:
            self._send(e.status, {"error": {"message": e.message, "type": e.kind, "param": None, "code": e.status}})

        def _authorized(self) -> bool:
            if api_key is None:
                return True
            got = self.headers.get("Authorization", "")
            token = got[7:].strip() if got[:7].lower() == "bearer " else ""
            if hmac.compare_digest(token.encode("utf-8"), api_key.encode("utf-8")):
                return True
            self._error(
                RequestError(401, "missing or wrong API key (Authorization: Bearer <key>)", "authentication_error")
            )
            return False

        def do_GET(self):
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/health":
                return self._send(200, {"status": "ok"})
            if not self._authorized():
                return
            if path == "/v1/models":
                return self._send(200, model.models_body())
            self._error(RequestError(404, f"no route GET {path}", "not_found_error"))

        def do_POST(self):
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                n = int(self.headers.get("Content-Length") or -1)
            except ValueError:
                n = -1
            if n < 0 or n > MAX_BODY_BYTES:
                self.close_connection = True
                return self._error(
                    RequestError(
                        400 if n < 0 else 413, f"a Content-Length (at most {MAX_BODY_BYTES} bytes) is required"
                    )
                )
            raw = self.rfile.read(n)
            if not self._authorized():
                return
            if path != "/v1/chat/completions":
                return self._error(RequestError(404, f"no route POST {path}", "not_found_error"))
            try:
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as e:
                    raise _bad(f"the body is not JSON: {e}") from None
                self._send(200, model.complete(body))
            except RequestError as e:
                self._error(e)
            except Exception as e:  # a bug or an engine failure: this request fails, the server goes on
                traceback.print_exc()
                self._error(RequestError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

    return Handler


def make_server(
    model: ChatModel, host: str = "127.0.0.1", port: int = 0, *, api_key_env: str = API_KEY_ENV, quiet: bool = False
) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server for `model`; port 0 picks a free one
    (`server.server_address`). Refuses (ValueError) a non-loopback host unless `$api_key_env` holds
    a key; any host with the key set requires it."""
    key = os.environ.get(api_key_env) or None
    if host not in LOOPBACK and key is None:
        raise ValueError(
            f"serving on {host!r} (not loopback) needs an API key: set ${api_key_env} "
            "(clients send it as Authorization: Bearer <key>)"
        )
    server = ThreadingHTTPServer((host, int(port)), _handler(model, key, quiet))
    server.daemon_threads = True
    return server


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grlhfv_jax.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a complete Hugging Face folder (a stage's output or export's)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (not loopback: needs the API key)")
    ap.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed)")
    ap.add_argument("--served-model-name", default=None, help="the model name clients send (default: DIR's name)")
    ap.add_argument("--api-key-env", default=API_KEY_ENV, help="environment variable holding the API key")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--max-tokens", type=int, default=512, help="max_tokens when a request gives none")
    ap.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="prompt + max_tokens limit (default: config.json's max_position_embeddings)",
    )
    ap.add_argument("--quiet", action="store_true", help="no log line per request")
    args = ap.parse_args(argv)
    if args.host not in LOOPBACK and not os.environ.get(args.api_key_env):
        print(
            f"error: serving on {args.host!r} (not loopback) needs an API key: set ${args.api_key_env}", file=sys.stderr
        )
        return 2
    model = ChatModel(
        args.model,
        name=args.served_model_name,
        dtype=args.dtype,
        default_max_tokens=args.max_tokens,
        max_model_len=args.max_model_len,
    )
    server = make_server(model, args.host, args.port, api_key_env=args.api_key_env, quiet=args.quiet)
    host, port = server.server_address[:2]
    print(
        f"[serve] {model.name} at http://{host}:{port}/v1 (auth: "
        f"{'Bearer $' + args.api_key_env if os.environ.get(args.api_key_env) else 'none'})",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
