"""Reward-model and policy benchmarks: `python -m grlhfv_jax.evaluate --config configs/eval/X.py --workdir OUT
[--config.a.b=v ...]`.

The model under test is a GRM folder (judged with our KV-cache engine through
`rollout.grm_judge.GRMJudge`: every pair in both presentation orders, greedy, and with
`judge.voting_k` > 1 also k sampled judgments per order, majority vote) or a score-only RM folder
(`stages.judging.rm_scores`: one scalar per response). Benchmarks (`grlhfv_jax.data.benchmarks`)
are read from local copies in their published layouts. OUT gets:

    summary.json        flat `<benchmark>/<metric>` (e.g. vl_rewardbench/accuracy, .../macro_accuracy)
    <benchmark>.jsonl   per item: id, the model's raw output(s), the parsed scores and verdicts, labels, correctness
    report.md           first the benchmarks' leaderboard tables, then every figure, the skipped records, samples
    evaluate.log        what was skipped or did not parse, by benchmark and item id

Figures (docs/evaluation.md): each benchmark's own figures are computed in the dataset's order and
in the swapped order (verdicts mapped back) and averaged; `<metric>_order1` / `_order2` keep the
two apart for the headline figure. Besides: position_consistency (share of pairs whose two orders
both decide, not tie, and pick the same response), tie_rate and parse_failure_rate (over all
judgments), items, and bad_<reason> (records left out). With voting, the same figures from the
voted verdicts carry the suffix `_k<k>`. A vote: the plurality of the k verdicts that parsed
(1, 2 or tie); a draw at the top is a tie; no parsed sample is a parse failure.
A malformed record, a missing image, a prompt longer than max_len: counted and named, never fatal;
a benchmark that fails as a whole (e.g. its path is missing) is named in the summary
(`<benchmark>/error`) and the others run.

Policy benchmarks (model.kind = "policy": MIA-Bench, LLaVA-Bench-in-the-Wild, LLaVA-Bench-Wilder,
MM-Vet, MM-Vet v2, MM-SafetyBench, MSS-Bench; data.benchmarks._policy): the policy folder answers
every item through our engine (batch_rows prompts a call, the benchmark's decoding: greedy), the
benchmark judge (judge.base_url / judge.model: a GPT-4o-class model over HTTP, rollout.HTTPJudge,
cached) grades every answer with the benchmark's published prompt, and the benchmark's own
aggregation gives its figures, on its 0-100 scale. Each JSONL row: id, question, the model's raw
output, the judge's raw text, the parsed score, the judge's model and parameters. A judge failure or
an unparsed judge text is counted (judge_failures, parse_failures, parse_failure_rate), named in
the log and left out of the figures. The trained GRM is refused as this judge (judge.model equal to
the model under test, or inside the run's GRM folders) unless judge.allow_trained_judge.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import json
import math
import os
import sys
import time

import ml_collections

from grlhfv_jax import encoding, roles
from grlhfv_jax.config import ConfigError, sections, typed_section
from grlhfv_jax.config import schema as cs
from grlhfv_jax.config.overrides import parse_value
from grlhfv_jax.rollout import grm_judge

BENCHMARK = {
    "kind": cs.Key("str?", None, "the benchmark's reader (data.benchmarks.ALL; None: the entry's name)"),
    "path": cs.Key(
        "str", cs.REQUIRED, "its file, folder or glob (files in name order), relative to config.root unless absolute"
    ),
    "format": cs.Key("str", "auto", "auto (by extension), parquet, jsonl or json"),
    "fields": cs.Key("map", {}, "column overrides: our field -> the dataset's column (the module's FIELDS)"),
    "limit": cs.Key("int?", None, "read at most this many items (None: all)"),
    "image_root": cs.Key(
        "str?",
        None,
        "folder image paths are relative to (None: the data file's folder), relative to config.root unless absolute",
    ),
    "enabled": cs.Key("bool", True, "evaluate this benchmark"),
    "max_new_tokens": cs.Key("int?", None, "policy benchmarks: answer tokens (None: the benchmark's DECODING)"),
    "temperature": cs.Key("float?", None, "policy benchmarks: answer temperature (None: the benchmark's, greedy)"),
}

SCHEMA = {
    "seed": cs.Key("int", 0, "seed of the sampled judgments (voting)"),
    "workdir": cs.Key("str", "workdir/eval", "output folder when --workdir is not given"),
    "mesh_shape": cs.Key("list", (1, -1, 1), "device mesh over (data, fsdp, tensor); one -1 = the rest"),
    "root": cs.Key("str", "", "folder the benchmark paths are relative to"),
    "grm_template": cs.Key("str?", None, "GRM prompt template (None: the paper's, rl.grm_reward.GRM_TEMPLATE)"),
    "model": {
        "kind": cs.Key(
            "str",
            "grm",
            "grm (a generative judge: \\boxed{s1, s2}), rm (a score-only RM, scalar head) "
            "or policy (answers the policy benchmarks)",
        ),
        "path": cs.Key("str?", None, "the model's Hugging Face folder"),
        "name": cs.Key("str?", None, "its name in the report (None: the folder's name)"),
        "tokenizer_dir": cs.Key("str?", None, "tokenizer folder (None: the model folder)"),
        "dtype": cs.Key("str", "float32", "compute dtype (float32, bfloat16)"),
        "param_dtype": cs.Key("str", "float32", "weight dtype"),
    },
    "image": {
        **sections.IMAGE,
        "processor_dir": cs.Key(
            "str?", None, "folder with a preprocessor_config.json (None: the model folder's, else Qwen2-VL defaults)"
        ),
    },
    "judge": {
        "max_new_tokens": cs.Key("int", 512, "judgment tokens"),
        "voting_k": cs.Key("int", 1, "sampled judgments per pair and order for the majority vote (1: greedy only)"),
        "temperature": cs.Key("float", 1.0, "temperature of the sampled judgments (voting)"),
        "top_p": cs.Key("float", 1.0, "top-p of the sampled judgments"),
        # the policy benchmarks' judge: a GPT-4o-class model behind an OpenAI-compatible endpoint
        "base_url": cs.Key("str?", None, "policy benchmarks: the judge's endpoint ({base_url}/v1/chat/completions)"),
        "model": cs.Key("str?", None, "policy benchmarks: the judge's model name (never the trained GRM)"),
        "api_key_env": cs.Key("str", "OPENAI_API_KEY", "environment variable holding the judge's API key"),
        "max_concurrency": cs.Key("int", 8, "judge requests in flight"),
        "timeout_s": cs.Key("float", 120.0, "judge socket timeout"),
        "max_retries": cs.Key("int", 5, "judge retries (backoff, Retry-After)"),
        "cache_dir": cs.Key("str?", None, "judge cache folder (None: OUT/judge_cache); a rerun sends nothing"),
        "completion_tokens": cs.Key("int", 1024, "policy benchmarks: the judge's reply tokens (greedy)"),
        "allow_trained_judge": cs.Key(
            "bool",
            False,
            "force a trained GRM (the model under test or a GRM folder of "
            "its run) as the policy benchmarks' judge: reward hacking",
        ),
        "trained_grm_dirs": cs.Key("list", (), "more folders whose models are refused as the benchmark judge"),
    },
    "batch_rows": cs.Key("int", 8, "prompts per judging call / responses per RM scoring call"),
    "max_len": cs.Key("int", 2048, "prompt tokens (a longer item is left out, counted as too_long)"),
    "benchmarks": cs.Key(
        "map", {}, "name -> benchmark section (kind, path, format, fields, limit, image_root, enabled)"
    ),
}


def validate(config) -> ml_collections.ConfigDict:
    """A checked copy of `config` with every default filled in; ConfigError names a bad key."""
    cs.check(SCHEMA, config)
    out = (
        config.copy_and_resolve_references()
        if isinstance(config, ml_collections.ConfigDict)
        else ml_collections.ConfigDict(dict(config))
    )
    with out.unlocked():
        for key, node in SCHEMA.items():  # absent sections: all defaults
            if isinstance(node, dict) and key not in out:
                out[key] = ml_collections.ConfigDict()
        cs.fill(SCHEMA, out)
        for name in out.benchmarks:
            spec = out.benchmarks[name]
            if not isinstance(spec, (dict, ml_collections.ConfigDict)):
                raise ConfigError(f"config.benchmarks.{name} = {spec!r}: expected a section")
            cs.check(BENCHMARK, spec, f"benchmarks.{name}")
            cs.fill(BENCHMARK, spec)
            if "path" not in spec:
                raise ConfigError(f"config.benchmarks.{name}.path is missing ({BENCHMARK['path'].meaning})")
            from grlhfv_jax.data import benchmarks

            kind = spec.kind or name
            if kind not in benchmarks.ALL:
                raise ConfigError(
                    f"config.benchmarks.{name}.kind = {kind!r}: unknown benchmark (known: {', '.join(benchmarks.ALL)})"
                )
            module = benchmarks.get(kind)
            unknown = [k for k in spec.fields if k not in module.FIELDS and k != "label_values"]
            if unknown:
                raise ConfigError(
                    f"config.benchmarks.{name}.fields: unknown field(s) {unknown} (fields of {kind}: "
                    f"{', '.join(module.FIELDS)})"
                )
    if out.model.kind not in ("grm", "rm", "policy"):
        raise ConfigError(f"config.model.kind = {out.model.kind!r}: expected grm, rm or policy")
    from grlhfv_jax.data import benchmarks

    enabled = [(n, out.benchmarks[n].kind or n) for n in out.benchmarks if out.benchmarks[n].enabled]
    policy = [n for n, k in enabled if k in benchmarks.POLICY]
    other = [n for n, k in enabled if k not in benchmarks.POLICY]
    if policy and out.model.kind != "policy":
        raise ConfigError(
            f"config.benchmarks {policy} are policy benchmarks: set config.model.kind = 'policy' "
            f"(now {out.model.kind!r})"
        )
    if other and out.model.kind == "policy":
        raise ConfigError(
            f"config.benchmarks {other} judge reward models: config.model.kind = 'policy' answers "
            f"the policy benchmarks only"
        )
    if policy:
        why = trained_judge_reason(out)
        if why and not out.judge.allow_trained_judge:
            raise ConfigError(
                f"config.judge.model = {out.judge.model!r} {why}: a trained GRM must not judge the "
                "policy benchmarks (the paper's reward-hacking warning); set "
                "config.judge.allow_trained_judge=True to force it"
            )
    if out.judge.voting_k < 1:
        raise ConfigError(f"config.judge.voting_k = {out.judge.voting_k}: expected >= 1")
    if out.batch_rows < 1 or out.max_len < 8 or out.judge.max_new_tokens < 1:
        raise ConfigError("config.batch_rows >= 1, config.max_len >= 8 and config.judge.max_new_tokens >= 1")
    return out


def _schema_type(path: str) -> str | None:
    """The schema type of an override's dotted path (None: a key inside an open map)."""
    parts = path.split(".")
    if parts[0] == "benchmarks" and len(parts) >= 3:
        if parts[2] not in BENCHMARK:
            raise cs.unknown_key_error(".".join(parts[:2]), parts[2], BENCHMARK)
        node = BENCHMARK[parts[2]]
        return node.type if len(parts) == 3 else None
    node = cs.lookup(SCHEMA, path)
    if isinstance(node, dict):
        raise ConfigError(f"config.{path} is a section, not a key")
    return node.type


def apply_overrides(config, overrides: list[str]) -> None:
    """`--config.a.b=v` arguments, typed by this schema (config.overrides' value parser), set on
    `config`; missing sections on the way are created (e.g. a new benchmark entry)."""
    for arg in overrides:
        path, value_text = arg[len("--config.") :].split("=", 1)
        kind = _schema_type(path)
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
                if part not in node:
                    node[part] = ml_collections.ConfigDict()
            node = node[part]
        if kind is None:
            old = node[leaf] if leaf in node else None
            kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(old), "literal")
        try:
            value = parse_value(value_text, kind)
        except (ValueError, SyntaxError) as e:
            raise ConfigError(f"config.{path} = {value_text!r}: {e}") from None
        with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
            node[leaf] = value


# ----------------------------------------------------------------------------- verdicts


def verdict_of(scores):
    """1, 2, 0 (tie) or None of parsed (s1, s2) scores (None: unparsed)."""
    if scores is None:
        return None
    return 1 if scores[0] > scores[1] else 2 if scores[1] > scores[0] else 0


def swap(v):
    return {1: 2, 2: 1}.get(v, v)


def vote(verdicts):
    """The plurality of the parsed verdicts (1, 2 or 0 = tie); a draw at the top -> 0; none parsed -> None."""
    counts = collections.Counter(v for v in verdicts if v is not None)
    if not counts:
        return None
    top = max(counts.values())
    best = [v for v, c in counts.items() if c == top]
    return best[0] if len(best) == 1 else 0


class Log:
    """Prints and appends to OUT/evaluate.log."""

    def __init__(self, path: str | None):
        self.path = path

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


def _nanmean(values):
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(sum(v) / len(v)) if v else float("nan")


def _avg_figures(per_order: list[dict]) -> dict:
    keys = list(dict.fromkeys(k for f in per_order for k in f))
    return {k: _nanmean([f.get(k) for f in per_order]) for k in keys}


# ----------------------------------------------------------------------------- judging


def decode(image):
    """Encoded image bytes -> uint8 [H, W, 3] (what the codec reads); anything else as it is."""
    if isinstance(image, (bytes, bytearray)):
        import io

        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(image)) as im:
            return np.asarray(im.convert("RGB"))
    return image


def judge_in_chunks(judge, prompts, params, rows: int) -> list[str]:
    """`judge.judge` over `prompts` in calls of `rows` prompts, each call's images decoded just before
    it (a benchmark's images stay encoded in memory); each call gets its rows' place in one draw
    over all prompts (`first_row`, `total_rows`), so the samples do not depend on `rows`. A short
    last call is filled up to `rows` with copies of its last prompt (their outputs dropped)."""
    n, out = int(params.num_samples), []
    total = -(-len(prompts) // rows) * rows * n
    for s in range(0, len(prompts), rows):
        chunk = [(q, decode(img), a, b) for q, img, a, b in prompts[s : s + rows]]
        real = len(chunk)
        chunk += chunk[-1:] * (rows - real)  # every call `rows` prompts: one compiled shape; copies dropped
        out += judge.judge(chunk, params.replace(first_row=s * n, total_rows=total))[: real * n]
    return out


def judge_greedy_and_sampled(judge, prompts, cfg) -> tuple[list[str], list[list[str]] | None]:
    """(the greedy judgment of every prompt, its cfg.judge.voting_k sampled judgments when k > 1 else
    None), in chunks of cfg.batch_rows rows."""
    from grlhfv_jax.rollout import SamplingParams

    k, rows = int(cfg.judge.voting_k), int(cfg.batch_rows)
    greedy = judge_in_chunks(
        judge, prompts, SamplingParams(max_new_tokens=cfg.judge.max_new_tokens, temperature=0.0), rows
    )
    sampled = None
    if k > 1:
        flat = judge_in_chunks(
            judge,
            prompts,
            SamplingParams(
                max_new_tokens=cfg.judge.max_new_tokens,
                temperature=cfg.judge.temperature,
                top_p=cfg.judge.top_p,
                num_samples=k,
                seed=cfg.seed,
            ),
            rows,
        )
        sampled = [flat[i * k : (i + 1) * k] for i in range(len(prompts))]
    return greedy, sampled


def judge_pairs(judge, items, cfg, log, name: str) -> tuple[list[dict], dict]:
    """Both orders of every pair, greedy (and k sampled with voting) -> (per-item rows, verdicts
    {"k1": [[order1, order2] per item], "k<k>": ...}) with the verdicts in the dataset's order."""
    from grlhfv_jax.rl import grm_reward

    k, n = int(cfg.judge.voting_k), len(items)
    prompts = [(it.question, it.image, it.responses[0], it.responses[1]) for it in items]
    prompts += [(it.question, it.image, it.responses[1], it.responses[0]) for it in items]
    greedy, sampled = judge_greedy_and_sampled(judge, prompts, cfg)
    rows, v1, vk = [], [], []
    for i, it in enumerate(items):
        texts = [greedy[i], greedy[n + i]]
        scores = [grm_reward.pair_scores(t) for t in texts]
        verdicts = [verdict_of(scores[0]), swap(verdict_of(scores[1]))]
        for order, (t, s) in enumerate(zip(texts, scores)):
            if s is None:
                log(f"[{name}] {it.id}: unparsed judgment (order {order + 1}): {t[-120:]!r}")
        row = {
            "id": it.id,
            "category": it.category,
            "labels": it.labels,
            "outputs": texts,
            "scores": [list(s) if s else None for s in scores],
            "verdicts": verdicts,
        }
        v1.append(verdicts)
        if sampled is not None:
            samp = [sampled[i], sampled[n + i]]
            sv = [
                [verdict_of(grm_reward.pair_scores(t)) for t in samp[0]],
                [swap(verdict_of(grm_reward.pair_scores(t))) for t in samp[1]],
            ]
            row.update(samples=samp, sample_verdicts=sv, votes=[vote(sv[0]), vote(sv[1])])
            vk.append(row["votes"])
        rows.append(row)
    return rows, {"k1": v1, **({f"k{k}": vk} if k > 1 else {})}


def judge_scores(judge, items, cfg, log, name: str) -> tuple[list[dict], dict]:
    """A GRM's score of one response: the response judged against itself, the mean of its two
    scores (one order: both are the same prompt); with voting the mean over the parsed samples."""
    from grlhfv_jax.rl import grm_reward

    k = int(cfg.judge.voting_k)
    prompts = [(it.question, it.image, it.responses[0], it.responses[0]) for it in items]
    greedy, sampled = judge_greedy_and_sampled(judge, prompts, cfg)
    rows, s1, sk = [], [], []

    def score(t):
        s = grm_reward.pair_scores(t)
        return None if s is None else (s[0] + s[1]) / 2

    for i, it in enumerate(items):
        sc = score(greedy[i])
        if sc is None:
            log(f"[{name}] {it.id}: unparsed judgment: {greedy[i][-120:]!r}")
        row = {"id": it.id, "human": it.human, "outputs": [greedy[i]], "score": sc}
        s1.append(sc)
        if sampled is not None:
            ss = [score(t) for t in sampled[i]]
            parsed = [x for x in ss if x is not None]
            row.update(samples=sampled[i], sample_scores=ss, vote_score=sum(parsed) / len(parsed) if parsed else None)
            sk.append(row["vote_score"])
        rows.append(row)
    return rows, {"k1": s1, **({f"k{k}": sk} if k > 1 else {})}


def rm_pairs(scorer, items) -> tuple[list[dict], dict]:
    """A score-only RM: one scalar per response; the verdict does not depend on the order."""
    flat = scorer([(it.question, it.image, r) for it in items for r in it.responses[:2]])
    rows, v = [], []
    for i, it in enumerate(items):
        s = (float(flat[2 * i]), float(flat[2 * i + 1]))
        verdict = verdict_of(s)
        rows.append({"id": it.id, "category": it.category, "labels": it.labels, "scores": list(s), "verdict": verdict})
        v.append([verdict])
    return rows, {"k1": v}


def rm_points(scorer, items) -> tuple[list[dict], dict]:
    flat = scorer([(it.question, it.image, it.responses[0]) for it in items])
    rows = [{"id": it.id, "human": it.human, "score": float(s)} for it, s in zip(items, flat)]
    return rows, {"k1": [float(s) for s in flat]}


def pair_summary(module, items, verdicts: list[list], suffix: str = "") -> dict:
    """The benchmark's figures, averaged over the orders judged, + consistency, ties, parse failures."""
    orders = len(verdicts[0]) if verdicts else 1
    per_order = [module.figures(items, [v[o] for v in verdicts]) for o in range(orders)]
    out = _avg_figures(per_order)
    head = module.LEADERBOARD[0][0]
    if orders == 2:
        for o in range(2):
            out[f"{head}_order{o + 1}"] = per_order[o].get(head, float("nan"))
        out["position_consistency"] = _nanmean([float(a in (1, 2) and a == b) for a, b in verdicts])
    judgments = [x for v in verdicts for x in v]
    out["tie_rate"] = _nanmean([float(x == 0) for x in judgments])
    out["parse_failure_rate"] = _nanmean([float(x is None) for x in judgments])
    return {k + suffix: v for k, v in out.items()}


# ----------------------------------------------------------------------------- policy benchmarks


def trained_judge_reason(cfg) -> str | None:
    """Why `cfg.judge.model` is a trained GRM of this run (None: it is not): the model under test
    itself, or a path inside the run's GRM folders (<run>/sft/grm, <run>/grm_rl/grm, <run>/rm/rm of
    the run holding model.path, and judge.trained_grm_dirs), or named like one (…/grm_rl/grm, …/sft/grm)."""
    jm = cfg.judge.model
    if not jm:
        return None
    under_test = [x for x in (cfg.model.path, cfg.model.name) if x]
    real = os.path.realpath(jm)
    if jm in under_test or (cfg.model.path and real == os.path.realpath(cfg.model.path)):
        return "is the model under test"
    dirs = [str(d) for d in cfg.judge.trained_grm_dirs]
    if cfg.model.path:
        run = os.path.dirname(os.path.dirname(os.path.realpath(cfg.model.path)))
        dirs += [os.path.join(run, "sft", "grm"), os.path.join(run, "grm_rl", "grm"), os.path.join(run, "rm", "rm")]
    for d in dirs:
        d = os.path.realpath(d)
        if real == d or real.startswith(d + os.sep):
            return f"is inside the run's GRM folder {d}"
    tail = jm.replace("\\", "/").rstrip("/")
    if tail.endswith(("grm_rl/grm", "sft/grm")):
        return "names a trained GRM folder (…/grm_rl/grm or …/sft/grm)"
    return None


def run_policy(module, items, answerer, text_judge, cfg, spec, log, name: str) -> tuple[list[dict], dict]:
    """The model answers every item (the benchmark's decoding, or the entry's overrides), the judge
    grades every answer with the benchmark's prompt (greedy, or its module's JUDGE_TEMPERATURE), the
    module parses and aggregates.
    A benchmark whose evaluator re-asks an unparsed grade at higher temperatures (its module's
    RETRY_TEMPERATURES: MM-Vet's) is re-asked so (`rejudged` counts the grades that parsed then).
    A judge failure (no text) or a text still unparsed: counted, named in the log, left out of the figures."""
    from grlhfv_jax.rollout import SamplingParams

    dec = dict(module.DECODING)
    if spec.max_new_tokens is not None:
        dec["max_new_tokens"] = int(spec.max_new_tokens)
    if spec.temperature is not None:
        dec["temperature"] = float(spec.temperature)
    answers = (
        list(answerer([(it.question, it.image) for it in items], dec["max_new_tokens"], dec["temperature"]))
        if items
        else []
    )
    convs = [module.judge_messages(it, a) for it, a in zip(items, answers)]
    tokens = int(cfg.judge.completion_tokens)
    t0 = float(getattr(module, "JUDGE_TEMPERATURE", 0.0))  # the benchmark's judging temperature (LLaVA: 0.2)
    texts = list(text_judge.complete(convs, SamplingParams(max_new_tokens=tokens, temperature=t0))) if convs else []
    temps = [t0] * len(texts)

    def parse(it, t):
        if t is None:
            return None
        try:
            return module.parse(it, t)
        except Exception as e:  # a parser surprise is an unparsed answer, never fatal
            log(f"[{name}] {it.id}: parser error {type(e).__name__}: {e}")
            return None

    grades = [parse(it, t) for it, t in zip(items, texts)]
    rejudged = 0
    for temp in getattr(module, "RETRY_TEMPERATURES", ()):
        again = [i for i, (g, t) in enumerate(zip(grades, texts)) if g is None and t is not None]
        if not again:
            break
        more = text_judge.complete([convs[i] for i in again], SamplingParams(max_new_tokens=tokens, temperature=temp))
        for i, t in zip(again, more):
            g = parse(items[i], t)
            if g is not None:
                texts[i], grades[i], temps[i], rejudged = t, g, temp, rejudged + 1
    rows, failed, unparsed = [], 0, 0
    jname = cfg.judge.model or getattr(text_judge, "model", None) or type(text_judge).__name__
    for it, a, t, g, temp in zip(items, answers, texts, grades, temps):
        if t is None:
            failed += 1
            log(f"[{name}] {it.id}: the judge gave no answer (failed request)")
        elif g is None:
            unparsed += 1
            log(f"[{name}] {it.id}: unparsed judge answer: {str(t)[:160]!r}")
        rows.append(
            {
                "id": it.id,
                "category": it.category,
                "question": it.question,
                "output": a,
                "judge": t,
                "score": g,
                "judge_model": jname,
                "judge_params": {"temperature": temp, "max_tokens": tokens},
                "decoding": dec,
                **({"ref": {k: v for k, v in it.ref.items() if k != "images"}} if it.ref else {}),
            }
        )
    figs = dict(module.figures(items, grades)) if items else {}
    n = max(len(items), 1)
    figs.update(
        judged=float(sum(g is not None for g in grades)),
        judge_failures=float(failed),
        parse_failures=float(unparsed),
        rejudged=float(rejudged),
        parse_failure_rate=float((failed + unparsed) / n) if items else float("nan"),
    )
    return rows, figs


# ----------------------------------------------------------------------------- the run


def _resolve(root: str, path: str | None) -> str | None:
    if not path:
        return path
    return path if os.path.isabs(path) or not root else os.path.join(root, path)


def read_benchmark(name: str, spec, root: str, log) -> tuple[object, list, object]:
    from grlhfv_jax.data import benchmarks

    module = benchmarks.get(spec.kind or name)
    fields = dict(module.FIELDS)
    fields.update(dict(spec.fields))
    problems = benchmarks.common.Problems(name, log=log)
    fmt = spec.format if spec.format != "auto" else module.FORMAT
    path, image_root = _resolve(root, spec.path), _resolve(root, spec.image_root)
    if not glob.has_magic(path):
        return (
            module,
            module.read(path, fields, fmt=fmt, limit=spec.limit, image_root=image_root, problems=problems),
            problems,
        )
    # a glob (e.g. BeaverTails-V's <category>/evaluation-*.parquet): its files in name order; ids
    # prefixed with the file's folder (files of several folders share their names)
    files = sorted(glob.glob(path, recursive=True))
    if not files:
        raise FileNotFoundError(f"no file matches {path!r}")
    items = []
    for file in files:
        left = None if spec.limit is None else spec.limit - len(items)
        if left is not None and left <= 0:
            break
        for it in module.read(file, fields, fmt=fmt, limit=left, image_root=image_root, problems=problems):
            it.id = f"{os.path.basename(os.path.dirname(file))}/{it.id}"
            items.append(it)
    return module, items, problems


def evaluate(
    config,
    workdir: str,
    *,
    judge=None,
    scorer=None,
    codec=None,
    model_name: str | None = None,
    answerer=None,
    text_judge=None,
) -> dict:
    """Runs every enabled benchmark of `config` against `judge` (a `rollout.Judge`: a GRM) or
    `scorer` (items (question, image, response) -> scores: a score-only RM); writes the outputs
    into `workdir` and returns the summary. `codec` (optional): prompts longer than max_len are
    left out (too_long) before judging. Policy benchmarks: `answerer` (the model under test:
    (prompts [(question, image bytes)], max_new_tokens, temperature) -> answers) and `text_judge`
    (an object with `complete(conversations, SamplingParams) -> texts`, e.g. rollout.HTTPJudge)."""
    from grlhfv_jax.metrics import is_main_process

    cfg = validate(config)
    main = is_main_process()  # with several JAX processes, process 0 alone writes files
    log_path = os.path.join(workdir, "evaluate.log")
    if main:
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(log_path):
            os.remove(log_path)
    log = Log(log_path if main else None)
    if answerer is not None:
        if text_judge is None:
            raise ValueError("evaluate: the policy benchmarks need a text_judge (the benchmark judge)")
    elif (judge is None) == (scorer is None):
        raise ValueError("evaluate: pass a judge (GRM), a scorer (score-only RM) or an answerer (policy)")
    summary, details = {}, {}
    k = int(cfg.judge.voting_k)
    for name in cfg.benchmarks:
        spec = cfg.benchmarks[name]
        if not spec.enabled:
            continue
        t0 = time.time()
        try:
            module, items, problems = read_benchmark(name, spec, cfg.root, log)
            items = _drop_too_long(items, codec, cfg, problems, judge is not None, module.TASK)
            log(f"[{name}] {len(items)} items ({problems.summary()['bad_total']} left out)")
            if module.TASK == "policy":
                rows, figs = run_policy(module, items, answerer, text_judge, cfg, spec, log, name)
            elif module.TASK == "pair":
                rows, verdicts = (
                    judge_pairs(judge, items, cfg, log, name) if judge is not None else rm_pairs(scorer, items)
                )
                figs = pair_summary(module, items, verdicts["k1"]) if items else {}
                if k > 1 and judge is not None and items:
                    figs.update(pair_summary(module, items, verdicts[f"k{k}"], suffix=f"_k{k}"))
            else:
                rows, scores = (
                    judge_scores(judge, items, cfg, log, name) if judge is not None else rm_points(scorer, items)
                )
                figs = dict(module.figures(items, scores["k1"])) if items else {}
                figs["parse_failure_rate"] = _nanmean([float(s is None) for s in scores["k1"]])
                if k > 1 and judge is not None and items:
                    figs.update({f"{m}_k{k}": v for m, v in module.figures(items, scores[f"k{k}"]).items()})
                    figs[f"parse_failure_rate_k{k}"] = _nanmean([float(s is None) for s in scores[f"k{k}"]])
            figs["items"] = float(len(items))
            figs.update(problems.summary())
            if main:
                with open(os.path.join(workdir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
                    for row in rows:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
            details[name] = {"module": module, "problems": problems, "rows": rows[:4]}
        except Exception as e:  # one benchmark's failure names it; the others run
            log(f"[{name}] failed: {type(e).__name__}: {e}")
            figs = {"error": f"{type(e).__name__}: {e}"}
        figs["time_s"] = time.time() - t0
        summary.update({f"{name}/{m}": v for m, v in figs.items()})
    if main:
        from grlhfv_jax.metrics import write_json_atomic, write_text_atomic

        write_json_atomic(os.path.join(workdir, "summary.json"), summary)
        name = (
            model_name
            or cfg.model.name
            or (os.path.basename(os.path.normpath(cfg.model.path)) if cfg.model.path else "model")
        )
        write_text_atomic(os.path.join(workdir, "report.md"), report(summary, details, cfg, name))
    return summary


def _drop_too_long(items, codec, cfg, problems, grm: bool, task: str):
    if codec is None:
        return items
    kept = []
    for it in items:
        img = decode(it.image)
        if task == "policy":
            n = len(codec.example(it.question, img)["input_ids"])
        elif grm:
            r2 = it.responses[1] if task == "pair" else it.responses[0]
            n = len(codec.grm_example(it.question, img, it.responses[0], r2)["input_ids"])
        else:
            n = max(len(codec.example(it.question, img, r)["input_ids"]) for r in it.responses)
        if n > cfg.max_len:
            problems.add(it.id, "too_long", f"{n} prompt tokens > max_len {cfg.max_len}")
        else:
            kept.append(it)
    return kept


def _pct(v) -> str:
    if isinstance(v, str) or v is None:
        return "–"
    return "–" if isinstance(v, float) and math.isnan(v) else f"{100 * v:.1f}"


def report(summary: dict, details: dict, cfg, model_name: str) -> str:
    """Markdown: each benchmark's leaderboard table first (figures x 100, as the leaderboards print
    them; Pearson and counts as they are), then every figure, the records left out, a few samples."""
    k = int(cfg.judge.voting_k)
    policy = any(d["module"].TASK == "policy" for d in details.values())
    lines = [f"# {'Policy' if policy else 'Reward-model'} benchmarks: {model_name}", ""]
    if policy:
        lines += [
            f"Judge: {cfg.judge.model} ({cfg.judge.completion_tokens} tokens, each benchmark's judging "
            "temperature); figures on each benchmark's own 0-100 scale.",
            "",
        ]
    for name, d in details.items():
        cols = d["module"].LEADERBOARD
        lines += [f"## {name}", "", "| Model | " + " | ".join(c for _, c in cols) + " |", "|---|" + "---|" * len(cols)]
        variants = [("", model_name)] + (
            [(f"_k{k}", f"{model_name} (vote of {k})")] if f"{name}/{cols[0][0]}_k{k}" in summary else []
        )
        for suf, label in variants:
            cells = []
            for m, _ in cols:
                v = summary.get(f"{name}/{m}{suf}")
                if d["module"].TASK == "policy":
                    cells.append("–" if not isinstance(v, (int, float)) or v != v else f"{v:.1f}")
                    continue
                cells.append(
                    _pct(v)
                    if m not in ("pearson", "scored")
                    else ("–" if v is None or v != v else f"{v:.3f}" if m == "pearson" else f"{v:.0f}")
                )
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## How the judging went",
        "",
        "| Benchmark | Items | Left out | Parse failures | Ties | Position consistency |"
        + (f" Parse failures (vote of {k}) | Position consistency (vote of {k}) |" if k > 1 else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if k > 1 else ""),
    ]
    for name in details:
        g = lambda m: summary.get(f"{name}/{m}")  # noqa: E731
        row = [
            name,
            f"{g('items') or 0:.0f}",
            f"{g('bad_total') or 0:.0f}",
            _pct(g("parse_failure_rate")),
            _pct(g("tie_rate")),
            _pct(g("position_consistency")),
        ]
        if k > 1:
            row += [_pct(g(f"parse_failure_rate_k{k}")), _pct(g(f"position_consistency_k{k}"))]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    failed = {k_.split("/")[0]: v for k_, v in summary.items() if k_.endswith("/error")}
    if failed:
        lines += ["## Benchmarks that failed", ""] + [f"- {n}: {e}" for n, e in failed.items()] + [""]
    lines += ["## Every figure", "", "| key | value |", "|---|---|"]
    lines += [f"| {k_} | {v if isinstance(v, str) else f'{v:.4f}'} |" for k_, v in sorted(summary.items())]
    lines.append("")
    for name, d in details.items():
        named = d["problems"].named
        if named:
            lines += [f"## {name}: records left out ({len(named)} named)", ""]
            lines += [f"- {i}: {r}: {t}" for i, r, t in named[:50]] + [""]
    lines += ["## Sample judgments", ""]
    for name, d in details.items():
        for row in d["rows"][:2]:
            if "judge" in row:  # a policy benchmark: the answer, the judge's text, the grade
                lines += [
                    f"- {name} {row['id']}: {str(row['output'])[:200]!r} -> judge {str(row['judge'])[:200]!r} "
                    f"-> {json.dumps(row['score'])}"
                ]
                continue
            out = row.get("outputs", [""])[0] if "outputs" in row else json.dumps(row.get("scores"))
            lines += [f"- {name} {row['id']}: {str(out)[:300]!r} -> {row.get('verdicts', row.get('score'))}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the model


def build(cfg, log=print, workdir: str | None = None):
    """(judge or None, scorer or None, codec, name) of `cfg.model`: a GRM folder -> GRMJudge; an RM
    folder -> a scorer over `stages.judging.rm_scores`."""
    from grlhfv_jax.stages import judging

    path = cfg.model.path
    if not path:
        raise ConfigError("config.model.path is missing: the model folder to evaluate")
    if cfg.image.processor_dir is None and os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        cfg = cfg.copy_and_resolve_references()
        cfg.image.processor_dir = path  # the codec and the vision tower's block size read the same processor
    codec = encoding.Codec.from_dirs(cfg.model.tokenizer_dir or path, dict(cfg.image), cfg.grm_template or None)
    spec = typed_section(sections.MODEL, {"dtype": cfg.model.dtype, "param_dtype": cfg.model.param_dtype}, "model")
    if cfg.model.kind == "policy":
        return build_policy(cfg, codec, spec, log, workdir)
    rm = cfg.model.kind == "rm"
    model = roles.load_stage_output(path, "the model folder to evaluate", cfg, spec, scalar_head=rm)
    name = cfg.model.name or os.path.basename(os.path.normpath(path))
    log(f"[evaluate] {cfg.model.kind} {path}")
    if rm:

        def scorer(items):  # images decoded one call at a time; every call batch_rows rows (one shape)
            import numpy as np

            rows, out = int(cfg.batch_rows), []
            for s in range(0, len(items), rows):
                chunk = [(q, decode(img), r) for q, img, r in items[s : s + rows]]
                real = len(chunk)
                chunk += chunk[-1:] * (rows - real)
                out.append(judging.rm_scores(model, codec, chunk, rows=rows, max_len=cfg.max_len)[:real])
            return np.concatenate(out) if out else np.zeros((0,), np.float32)

        return None, scorer, codec, name
    return grm_judge.GRMJudge(model, codec, rows=cfg.batch_rows, max_len=cfg.max_len), None, codec, name


def build_policy(cfg, codec, spec, log, workdir):
    """(answerer, text judge, codec, name): the policy through our engine (stages.evaluate.answers,
    batch_rows prompts per call, images decoded one call at a time) and the benchmark judge over
    HTTP (rollout.HTTPJudge: retries, cache in judge.cache_dir or OUT/judge_cache)."""
    from grlhfv_jax.rollout import group_sampling
    from grlhfv_jax.rollout.http_judge import HTTPJudge

    if not cfg.judge.base_url or not cfg.judge.model:
        raise ConfigError(
            "config.judge.base_url and config.judge.model are required: the policy benchmarks' judge "
            "(a GPT-4o-class model behind an OpenAI-compatible endpoint)"
        )
    path = cfg.model.path
    model = roles.load_stage_output(path, "the policy to evaluate", cfg, spec)
    rows = int(cfg.batch_rows)

    def answerer(prompts, max_new_tokens, temperature):
        out = []
        for s in range(0, len(prompts), rows):
            recs = [{"question": q, "image": decode(img)} for q, img in prompts[s : s + rows]]
            texts, _ = group_sampling.answers(
                model,
                codec,
                recs,
                max_len=cfg.max_len,
                max_new_tokens=int(max_new_tokens),
                rows=rows,
                temperature=float(temperature),
                seed=int(cfg.seed) + s,
            )
            out += texts
        return out

    cache = cfg.judge.cache_dir or (os.path.join(workdir, "judge_cache") if workdir else None)
    judge = HTTPJudge(
        cfg.judge.base_url,
        cfg.judge.model,
        api_key_env=cfg.judge.api_key_env,
        max_concurrency=cfg.judge.max_concurrency,
        timeout_s=cfg.judge.timeout_s,
        max_retries=cfg.judge.max_retries,
        cache_dir=cache,
    )
    log(f"[evaluate] policy {path}; judge {cfg.judge.model} at {cfg.judge.base_url}")
    return answerer, judge, codec, cfg.model.name or os.path.basename(os.path.normpath(path))


def run(config, workdir: str) -> dict:
    cfg = validate(config)
    if cfg.model.kind == "policy":
        answerer, text_judge, codec, name = build(cfg, workdir=workdir)
        return evaluate(cfg, workdir, answerer=answerer, text_judge=text_judge, codec=codec, model_name=name)
    judge, scorer, codec, name = build(cfg)
    return evaluate(cfg, workdir, judge=judge, scorer=scorer, codec=codec, model_name=name)


def placeholders(cfg) -> list:
    """Placeholders ("<...>") left in the keys this run reads (disabled benchmarks aside)."""
    from grlhfv_jax.config import placeholders as find

    left = [(k, v) for k, v in find(cfg) if not k.startswith("benchmarks.")]
    for name in cfg.benchmarks:
        if cfg.benchmarks[name].enabled:
            left += [(f"benchmarks.{name}.{k}", v) for k, v in find(cfg.benchmarks[name])]
    return left


def main(argv=None) -> int:
    """The command line (module docstring)."""
    from absl import app

    argv = list(sys.argv if argv is None else argv)
    overrides = [a for a in argv[1:] if a.startswith("--config.") and "=" in a]
    from grlhfv_jax import main as _main  # its --config / --workdir flags, its value parser

    kept = [a for a in argv if a not in overrides]
    saved = sys.argv
    sys.argv = kept
    try:
        app.parse_flags_with_usage(kept)
    finally:
        sys.argv = saved
    if _main._DESCRIBE.value is not None:  # this schema's keys, not the training stages'
        head = f"{'key':<34} {'type':<7} {'default':<16} meaning"
        print("\n".join([head] + cs.describe_lines(SCHEMA) + cs.describe_lines(BENCHMARK, "benchmarks.<name>")))
        return 0
    config = _main._CONFIG.value
    if config is None:
        sys.exit("--config is required, e.g. --config configs/eval/rm_benchmarks.py")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        apply_overrides(config, overrides)
        cfg = validate(config)
        left = placeholders(cfg)
        if left:
            raise ConfigError(
                f"config.{left[0][0]} = {left[0][1]!r} is a placeholder: set it on the command line "
                f"(--config.{left[0][0]}=...)" + (f"; also {', '.join(k for k, _ in left[1:])}" if left[1:] else "")
            )
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    workdir = _main._WORKDIR.value or cfg.workdir
    from grlhfv_jax.sharding import initialize_distributed

    initialize_distributed()
    summary = run(cfg, workdir)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
