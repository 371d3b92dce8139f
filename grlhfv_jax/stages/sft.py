"""Stage `sft`: warm starts of the policy and of the generative reward model (GRM).

- policy: next-token loss on answers to the world's questions. `data="candidates"` uses the
  candidate answers of the preference pairs (mixed quality, like a base model's samples: there
  is room for RL to improve); `data="best"` uses the best answers; `data="styled"` the best
  answers in a style drawn from `styles` (plain / hedged / praised / praise_only -> weight): a
  warm start that knows the facts but hedges and praises itself, which the principle dislikes.
- grm: the judgment format of the GRM template ("Specific Criteria / Analysis / Scores"), with
  scores that carry no knowledge of the human principle, mixed with question answering
  (`vqa_fraction`) so the GRM learns to see the images. This plays the part of the paper's
  instruct model: stage 1 (grm_rl) must discover the principle from the binary reward.
  On preference files (`judgments` a data.grm_targets.JUDGMENTS name): the paper's GRM+SFT
  baseline, judgments written from each pair's per-response rates on the dataset's criteria and
  its critiques (split sft_grm), judging only.

Writes Hugging Face folders `workdir/sft/policy` and `workdir/sft/grm`.
"""

from __future__ import annotations

import os

import numpy as np

from grlhfv_jax import encoding, memory, roles
from grlhfv_jax.checkpoint import export_hf, exported_summary
from grlhfv_jax.data import grm_targets
from grlhfv_jax.rl.logprobs import window_start_and_length
from grlhfv_jax.trainers import loop, steps

TARGETS = ("policy", "grm")


def _examples_policy(codec, records, data: str, styles=None, seed: int = 0, restyle=None) -> list[dict]:
    """Examples of the policy's warm start; `restyle`: the source's `hooks.restyle` (data="styled")."""
    out = []
    for r in records:
        if data == "best":
            out.append(codec.example(r["question"], r["image"], r["answer"]))
        elif data == "styled":  # the style of record i is fixed by (seed, i): the same on every epoch / resume
            rng = np.random.default_rng([seed, int(str(r["id"]).rsplit("-", 1)[-1])])
            out.append(codec.example(r["question"], r["image"], restyle(rng, r["answer"], styles)))
        else:
            out.append(codec.example(r["question"], r["image"], r["response_1"]))
            out.append(codec.example(r["question"], r["image"], r["response_2"]))
    return out


def run(config, workdir: str, writer, section: str) -> dict:
    src = roles.source(config, workdir)
    codec = roles.codec(config, workdir)
    sec = config[section]
    summary = {}
    for target in TARGETS:
        if target not in sec:
            continue
        out = roles.output_dir(workdir, "sft", target)
        done = exported_summary(out)
        if done is not None:
            print(f"[sft] {target}: {out} exists, skipping", flush=True)
            summary.update(done)
            continue
        tc = sec[target]
        model = roles.new_or_load(
            config.model[target],
            codec,
            seed=config.seed + (target == "grm"),
            mesh=roles.mesh_from_config(config),
            config=config,
        )
        if tc.pretrained_vision:
            roles.copy_tower(model, workdir, config, config.model[target])
            print(f"[sft] {target}: vision tower from {roles.output_dir(workdir, 'vision')}", flush=True)
        state = loop.make_train_state(model, tc, tc.steps)
        B = tc.batch_size
        if target == "policy":
            split = "sft_grm" if tc.data == "candidates" else "sft_policy"
            ds = src.dataset(split, seed=config.seed, batch_size=B)
            if tc.data == "styled" and src.hooks is None:
                raise ValueError(f"config.{section}.policy.data = 'styled' needs a data source that restyles answers")

            def make_batch(step, ds=ds, tc=tc):
                ex = _examples_policy(
                    codec, ds[step], tc.data, dict(tc.styles), seed=config.seed, restyle=src.hooks and src.hooks.restyle
                )
                order = np.random.default_rng([config.seed, step]).permutation(len(ex))  # same on resume
                ex = [ex[i] for i in order[:B]]
                return _to_train(encoding.batch(ex, codec, side="right", max_len=tc.max_len))
        else:
            n_vqa = int(round(B * float(tc.vqa_fraction)))
            judg = src.dataset("sft_grm", seed=config.seed, batch_size=B - n_vqa)
            vqa = src.dataset("sft_policy", seed=config.seed + 1, batch_size=n_vqa) if n_vqa else None

            spec = grm_targets.JUDGMENTS[tc.judgments]  # None: the world's own judgments

            def make_batch(step, judg=judg, vqa=vqa, n_vqa=n_vqa, tc=tc, spec=spec):
                recs = judg[step]
                ex = [
                    codec.grm_example(
                        r["question"],
                        r["image"],
                        r["response_1"],
                        r["response_2"],
                        r["judgment"] if spec is None else _judgment(r, spec),
                    )
                    for r in recs
                ]
                if spec is not None:  # files: the data stage checked the prompt, not prompt + judgment
                    ex = _fitting(ex, recs, int(tc.max_len), step)
                b = _to_train(encoding.batch(ex, codec, side="right", max_len=tc.max_len, rows=len(recs)))
                if not n_vqa:
                    return b
                # the short answers in a part of their own width: one loss over both parts
                # (steps.sft_step), without padding them to the judgments' max_len
                vq = [codec.example(r["question"], r["image"], r["answer"]) for r in vqa[step]]
                v = _to_train(encoding.batch(vq, codec, side="right", max_len=tc.vqa_max_len))
                return {"parts": (b, v), "window": (b.pop("window"), v.pop("window"))}

        last = loop.train_loop(
            f"sft_{target}",
            state,
            steps=tc.steps,
            make_batch=make_batch,
            step_fn=lambda s, b: steps.sft_step(s, b.get("parts", b), window=b.pop("window")),
            writer=writer,
            ckpt_dir=os.path.join(workdir, "sft", f"ckpt_{target}"),
            log_every=int(sec.log_every),
            ckpt_every=int(sec.ckpt_every),
        )
        result = {f"sft/{target}_{k}": v for k, v in last.items() if k in ("loss", "accuracy")}
        export_hf(state.model, out, summary=result, codec=codec)
        summary.update(result)
    return summary


def _judgment(record: dict, spec) -> str:
    """The GRM+SFT target of a preference record (data.grm_targets), its id named when it has none."""
    try:
        return grm_targets.judgment(record["meta"], spec)
    except ValueError as e:
        raise ValueError(f"sft.grm: record {record.get('id')!r} of split sft_grm: {e}") from None


def _fitting(examples: list, records: list, max_len: int, step: int) -> list:
    """The examples of at most `max_len` tokens; each one left out is named in the log (its row of the
    batch is filled, with no loss). At least one is kept (the batch's fill rows repeat it): an
    over-long first one stops the run."""
    kept = [e for e in examples if len(e["input_ids"]) <= max_len]
    for e, r in zip(examples, records):
        if len(e["input_ids"]) > max_len:
            print(
                f"[sft] grm step {step}: record {r.get('id')!r} left out: prompt + judgment "
                f"{len(e['input_ids'])} tokens > sft.grm.max_len = {max_len}",
                flush=True,
            )
    return kept or examples[:1]


def _to_train(b: dict) -> dict:
    """Drops host-only keys; the loss mask excludes fill rows; the window of target columns the
    LM head runs on (`steps.sft_step`'s ``window``, a multiple of 16 that covers every target)."""
    b = dict(b)
    b["loss_mask"] = b["loss_mask"] * b.pop("valid")[:, None]
    b["window_start"], b["window"] = window_start_and_length(b["loss_mask"])
    return b


def memory_phases(config, section: str) -> list[memory.Memory]:
    """What each target's training holds (one after the other; the dry run prices the larger): its
    model and one batch, each row's image through the tower."""
    out = []
    for target in TARGETS:
        if target in config[section]:
            tc, model = config[section][target], memory.Model(target)
            phase = memory.Phase(
                f"{target} batch: {tc.batch_size} rows x {tc.max_len} tokens",
                model,
                tc.batch_size,
                tc.max_len,
                tc.max_len,
                backward=True,
                images=tc.batch_size,
            )
            out.append(memory.Memory((model,), model, tc.freeze, (phase,)))
    return out
