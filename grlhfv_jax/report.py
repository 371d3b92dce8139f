"""The run report: `workdir/report.html`, a single self-contained page.

Reads what the stages wrote: `metrics.jsonl` (training curves), `summary.json` (final numbers),
`samples/judgments.jsonl` (sample GRM judgments with their image files) and `nscale.json`
(the n-scaling sweep, when run). Plots are PNGs inlined as base64.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grlhfv_jax import storage  # noqa: E402
from grlhfv_jax.metrics import read_jsonl  # noqa: E402

# (stage, metric) pairs drawn as training curves when present.
CURVES = [
    ("sft_policy", "loss"),
    ("sft_grm", "loss"),
    ("grm_rl", "reward/mean"),
    ("grm_rl", "judge/parse_failure"),
    ("grm_rl", "kl"),
    ("grm_rl", "eval/accuracy_id"),
    ("rm", "loss"),
    ("rm", "accuracy"),
    ("policy_rl", "reward/mean"),
    ("policy_rl", "oracle/mean"),
    ("policy_rl", "kl"),
    ("policy_rl", "judge/position_consistency"),
    ("policy_rl_rm", "reward/mean"),
    ("policy_rl_rm", "oracle/mean"),
    ("policy_ppo_rm", "reward/mean"),
    ("policy_ppo_rm", "oracle/mean"),
    ("policy_ppo_rm", "critic/vf_loss"),
    ("dpo", "loss"),
    ("dpo", "accuracy"),
]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "<img src='data:image/png;base64,%s'/>" % base64.b64encode(buf.getvalue()).decode()


def _series(rows):
    out = defaultdict(lambda: ([], []))
    for r in rows:
        for k, v in r.items():
            if k in ("stage", "step", "time") or not isinstance(v, (int, float)):
                continue
            xs, ys = out[(r["stage"], k)]
            xs.append(r["step"])
            ys.append(v)
    return out


def _curves(series) -> str:
    present = [c for c in CURVES if c in series]
    if not present:
        return "<p>No training curves logged.</p>"
    cols = 3
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), present):
        xs, ys = series[key]
        ax.plot(xs, ys, lw=1.2)
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(present) :]:
        ax.axis("off")
    return _png(fig)


# The headline: (label, summary key prefix) of each reward model and each policy.
REWARD_MODELS = [
    ("GRM after SFT (warm start)", "grm/sft_"),
    ("GRM after stage 1 (GRPO)", "grm/"),
    ("score-only RM (Bradley-Terry)", "baseline_rm/"),
]
POLICIES = [
    ("SFT policy (before RL)", "policy/", "_before"),
    ("GRLHF-V (GRM reward, GRPO)", "policy/", "_after"),
    ("score-only RM + GRPO", "baseline_rm/", "_after"),
    ("score-only RM + PPO", "ppo_rm/", "_after"),
    ("DPO", "dpo/", "_after"),
]
POLICY_COLUMNS = [
    ("oracle, sampled", "oracle_score_sampled"),
    ("oracle, greedy", "oracle_score"),
    ("hedging, sampled", "hedge_rate_sampled"),
    ("self-praise, sampled", "self_praise_rate_sampled"),
]


def _cell(summary, key) -> str:
    v = summary.get(key)
    if not isinstance(v, (int, float)):
        return "&ndash;"
    spread = summary.get(f"{key}/std")  # a seed sweep writes mean under key and std under key/std
    return f"{v:.3f}" + (f" &plusmn; {spread:.3f}" if isinstance(spread, (int, float)) else "")


def verdicts(summary) -> list[str]:
    """One line per stage that ran: did it learn? (Stage 1: GRM accuracy up by >= 0.1 in and out of
    distribution; stage 2: the GRLHF-V policy's sampled oracle score up.)"""
    out = []
    if "grm/accuracy_id" in summary and "grm/sft_accuracy_id" in summary:
        d = {s: summary[f"grm/accuracy_{s}"] - summary[f"grm/sft_accuracy_{s}"] for s in ("id", "ood")}
        ok = all(v >= 0.1 - 1e-9 for v in d.values())  # accuracies are fractions: 0.6 - 0.5 < 0.1 in floats
        out.append(
            f"Stage 1 (GRM RL): {'learned' if ok else 'did not learn (aim: +0.10 in and out of distribution)'}: "
            f"pairwise accuracy {d['id']:+.3f} in distribution, {d['ood']:+.3f} out of distribution; "
            f"position consistency {summary.get('grm/position_consistency_id', float('nan')):.2f}."
        )
    b, a = summary.get("policy/oracle_score_sampled_before"), summary.get("policy/oracle_score_sampled_after")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        se = summary.get("policy/oracle_gain_sampled_vs_sft_se")
        if isinstance(se, (int, float)) and se == se:  # paired SE over the evaluation prompts
            verdict = "improved" if a - b >= 2 * se else "did not improve by 2 standard errors"
            tail = f", paired SE {se:.3f}"
        else:
            verdict, tail = ("improved" if a > b else "did not improve"), ""
        out.append(
            f"Stage 2 (GRLHF-V policy): sampled oracle score {b:.3f} -> {a:.3f} ({a - b:+.3f}{tail}): {verdict}."
        )
    return out


def headline_html(summary) -> str:
    """The answer first: reward-model accuracies and policy quality side by side, and the verdicts."""
    rm_rows = "".join(
        f"<tr><td>{label}</td>"
        + "".join(
            f"<td>{_cell(summary, f'{pre}{m}')}</td>"
            for m in ("accuracy_id", "accuracy_ood", "position_consistency_id")
        )
        + "</tr>"
        for label, pre in REWARD_MODELS
        if f"{pre}accuracy_id" in summary
    )
    pol_rows = "".join(
        f"<tr><td>{label}</td>"
        + "".join(f"<td>{_cell(summary, f'{pre}{m}{suf}')}</td>" for _, m in POLICY_COLUMNS)
        + "</tr>"
        for label, pre, suf in POLICIES
        if f"{pre}oracle_score{suf}" in summary
    )
    style = "border=1 cellpadding=4 style='border-collapse:collapse;font-size:13px'"
    parts = ["<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdicts(summary)) + "</ul>"]
    if rm_rows:
        parts.append(
            f"<h3>Reward models: pairwise accuracy on held-out pairs</h3><table {style}><tr><th></th>"
            "<th>in distribution</th><th>out of distribution</th><th>position consistency</th></tr>"
            f"{rm_rows}</table>"
        )
    if pol_rows:
        parts.append(
            f"<h3>Policies on held-out prompts (oracle score: true quality, 0..1)</h3><table {style}>"
            "<tr><th></th>" + "".join(f"<th>{c}</th>" for c, _ in POLICY_COLUMNS) + f"</tr>{pol_rows}</table>"
        )
    return "".join(parts)


def _accuracy_bars(summary) -> str:
    """Each reward model's accuracy in and out of distribution: a handful of bars."""
    models = [(label, pre) for label, pre in REWARD_MODELS if f"{pre}accuracy_id" in summary]
    if not models:
        return ""
    fig, ax = plt.subplots(figsize=(6, 3))
    for k, split in enumerate(("id", "ood")):
        xs = [i + 0.38 * k for i in range(len(models))]
        vals = [summary.get(f"{pre}accuracy_{split}", 0.0) for _, pre in models]
        errs = [summary.get(f"{pre}accuracy_{split}/std", 0.0) for _, pre in models]
        ax.bar(xs, vals, width=0.36, yerr=errs, label="in distribution" if split == "id" else "out of distribution")
    ax.set_xticks([i + 0.19 for i in range(len(models))])
    ax.set_xticklabels([label for label, _ in models], fontsize=8)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("reward-model pairwise accuracy (dashed: chance)", fontsize=9)
    return _png(fig)


def _hacking(series) -> str:
    """Judge reward vs oracle score over policy training: where they part, the judge is fooled."""
    parts = []
    for stage in ("policy_rl", "policy_rl_rm", "policy_ppo_rm"):
        if (stage, "reward/mean") in series and (stage, "oracle/mean") in series:
            fig, ax = plt.subplots(figsize=(5, 3))
            xs, ys = series[(stage, "reward/mean")]
            ax.plot(xs, ys, label="judge reward (mean)")
            ax2 = ax.twinx()
            xo, yo = series[(stage, "oracle/mean")]
            ax2.plot(xo, yo, color="#dd8452", label="oracle score (mean)")
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("judge reward", fontsize=8)
            ax2.set_ylabel("oracle score", fontsize=8, color="#dd8452")
            ax.set_title(f"{stage}: judge reward vs oracle", fontsize=9)
            parts.append(_png(fig))
    return "".join(parts)


STEP_PARTS = ("rollout", "reward", "ref_logprobs", "update")


def step_times(rows) -> dict:
    """stage -> {part: mean seconds per RL step} from the ``time/<part>_s`` metrics the RL stages log
    (rollout, reward: judging / RM scoring / parsing, ref_logprobs, update, and the whole step);
    "other" is the step less its parts (data, oracle, metrics)."""
    sums, counts = defaultdict(lambda: defaultdict(float)), defaultdict(lambda: defaultdict(int))
    for r in rows:
        for k, v in r.items():
            if k.startswith("time/") and k.endswith("_s") and isinstance(v, (int, float)):
                sums[r["stage"]][k[5:-2]] += v
                counts[r["stage"]][k[5:-2]] += 1
    out = {}
    for stage, parts in sums.items():
        mean = {p: parts[p] / counts[stage][p] for p in parts}
        if "step" in mean:
            mean["other"] = mean["step"] - sum(mean.get(p, 0.0) for p in STEP_PARTS)
        out[stage] = mean
    return out


def _step_times_html(rows) -> str:
    table = step_times(rows)
    if not table:
        return ""
    cols = [p for p in STEP_PARTS + ("other", "step") if any(p in t for t in table.values())]
    head = "".join(f"<th>{p}</th>" for p in cols)
    body = "".join(
        f"<tr><td>{html.escape(s)}</td>"
        + "".join(
            f"<td>{t[p]:.3f} s ({t[p] / t['step']:.0%})</td>"
            if p in t and t.get("step")
            else (f"<td>{t[p]:.3f} s</td>" if p in t else "<td></td>")
            for p in cols
        )
        + "</tr>"
        for s, t in table.items()
    )
    return (
        "<h2>Time per RL step (mean seconds, share of the step)</h2>"
        f"<table border=1 cellpadding=4 style='border-collapse:collapse;font-size:12px'><tr><th>stage</th>{head}"
        f"</tr>{body}</table>"
    )


def _nscale(workdir) -> str:
    path = storage.path(workdir) / "nscale.json"
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for label, pts in data.items():
        ns = sorted(int(n) for n in pts)
        ax.plot(ns, [pts[str(n)] for n in ns], marker="o", label=label)
    ax.set_xlabel("n (samples per prompt)")
    ax.set_ylabel("oracle score gain")
    ax.legend(fontsize=7)
    ax.set_title("gain vs n", fontsize=9)
    return "<h2>n scaling</h2>" + _png(fig)


def _judgments(workdir, limit=8) -> str:
    path = storage.path(workdir) / "samples" / "judgments.jsonl"
    rows = read_jsonl(os.fspath(path))[:limit]
    if not rows:
        return ""
    out = [
        "<h2>Sample judgments</h2><table border=1 cellpadding=4 style='border-collapse:collapse;font-size:12px'>",
        "<tr><th>image</th><th>question</th><th>response 1</th><th>response 2</th>"
        "<th>GRM output</th><th>scores</th><th>human prefers</th></tr>",
    ]
    for r in rows:
        img = ""
        ipath = storage.path(workdir) / "samples" / r.get("image", "")
        if r.get("image") and ipath.exists():
            img = "<img width=84 src='data:image/png;base64,%s'/>" % base64.b64encode(ipath.read_bytes()).decode()
        cells = [img] + [
            html.escape(str(r.get(k, "")))
            for k in ("question", "response_1", "response_2", "output", "scores", "preferred")
        ]
        out.append("<tr>" + "".join(f"<td style='white-space:pre-wrap'>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def write_report(workdir: str) -> str:
    """Writes `workdir/report.html` (a local folder or a bucket: `storage`) and returns its path."""
    rows = read_jsonl(os.fspath(storage.path(workdir) / "metrics.jsonl"))
    summary = {}
    spath = storage.path(workdir) / "summary.json"
    if spath.exists():
        summary = json.loads(spath.read_text())
    series = _series(rows)
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
        if isinstance(v, (int, float))
        else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in sorted(summary.items())
    )
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>grlhfv_jax run report</title></head>
<body style='font-family:sans-serif;max-width:1300px'>
<h1>Generative RLHF-V run report</h1><p>workdir: {html.escape(workdir if storage.is_remote(workdir) else os.path.abspath(workdir))}</p>
<h2>Headline</h2>{headline_html(summary)}
<h2>Reward models</h2>{_accuracy_bars(summary)}
<h2>Policy: judge reward vs oracle score (reward hacking shows where they part)</h2>{_hacking(series)}
{_nscale(workdir)}
<h2>Training curves</h2>{_curves(series)}
{_step_times_html(rows)}
{_judgments(workdir)}
<h2>Every metric</h2><table border=1 cellpadding=3 style='border-collapse:collapse;font-size:12px'>{table}</table>
</body></html>"""
    out = os.fspath(storage.path(workdir) / "report.html")
    storage.write_text(out, page)
    return out
