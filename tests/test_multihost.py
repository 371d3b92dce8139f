"""Multi-host: 2 real JAX processes x 4 CPU devices (jax.distributed over a loopback coordinator,
gloo CPU collectives) against 1 process x 8 devices, on the same (2, 2, 2) mesh.

Each host reads its own block of every global batch (the data sources) and `trainers.loop.place_batch`
assembles the global batch (`sharding.global_batch`); `sharding.host_values` brings results back,
the same on every host. Checked: the data pipeline's global batches (same records, same order), and
SFT, DPO and GRPO steps on a tiny Qwen2-VL with images of different sizes, images split by
micro-batch (`trainers.loop.micro_batch_images`) and reference / old log-probs read back to the host
in between: metrics of every step, the parameters at the end and the exported Hugging Face
folder (`checkpoint.export_hf`: every host gathers the parameters, process 0 alone writes); and
rollouts through `rollout.group_sampling.engine_rollout` (each host hands in its prompts and gets its rows
of the global sample back) feeding the GRPO learner (`trainers.grpo.grpo_update`); a score-only
RM's scores (`trainers.scoring.score_batch`: each host gets its rows' scores); a GRM's evaluation
figures (`stages.judging.grm_accuracy`) over records split between the hosts.

Tolerance: rtol 2e-5, atol 2e-6 (float32, matmul precision "highest"). The two runs place the same
shards on the same mesh, but their cross-device sums differ: on 2 processes the all-reduces across
the hosts run over gloo, which adds the partial sums in another order than XLA's in-process
all-reduce, so results may differ in the last bits. SGD, not Adam: Adam divides by the root of the
squared gradient and turns last-bit differences of near-zero gradients into lr-sized ones, which
would hide nothing but make the tolerance meaningless. A host that treats its own rows as the whole
batch (the old `place_batch`) fails by orders of magnitude more than that.

Run alone: ``nice -n 19 python -m pytest -q tests/test_multihost.py`` (about a minute: three worker
processes compile the tiny steps; a persistent compilation cache makes reruns faster).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from grlhfv_jax.rollout import group_sampling

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOL = dict(rtol=2e-5, atol=2e-6)
MESH = (2, 2, 2)
GLOBAL_BATCH = 8
SFT_STEPS = 2


# ----------------------------------------------------------------------------- one process, no jax.distributed


def test_hosts_blocks_of_the_world_pipeline_are_one_processs_batches():
    from grlhfv_jax.data import pipeline
    from grlhfv_jax.data import world as W

    cfg = W.WorldConfig(sizes=(("grm_train", 11),))
    kw = dict(seed=4, num_epochs=None, batch_size=4, source="world")
    one = pipeline.dataset(None, "grm_train", cfg, shard_index=0, shard_count=1, **kw)
    two = [pipeline.dataset(None, "grm_train", cfg, shard_index=p, shard_count=2, **kw) for p in (0, 1)]
    for step in range(6):  # past two epochs
        assert [r["id"] for r in two[0][step]] + [r["id"] for r in two[1][step]] == [r["id"] for r in one[step]]
    with pytest.raises(ValueError, match="multiples of the process count"):
        pipeline.dataset(None, "grm_train", cfg, shard_index=0, shard_count=3, **kw)


# ----------------------------------------------------------------------------- the worker


def _rows():
    """8 rows (4 pairs for DPO) with images of different sizes, one row without."""
    return [
        [[1, 5, 6], (1, 2, 2), [7, 8]],
        [[1, 9], (1, 4, 2), [10]],
        [[1, 11, 12, 13, 14]],
        [[1], (1, 2, 4), [15, 16]],
        [[1, 17], (1, 2, 2), [3]],
        [[1, 18, 19], (1, 2, 2), [20]],
        [(1, 4, 4), [21]],
        [[1, 22, 23, 24], (1, 2, 2)],
    ]


def _host_rows(batch: dict, sl: slice, image_token_id: int, merge: int) -> dict:
    """Rows `sl` of a global numpy batch with their images (what a host's data source gives it)."""
    from grlhfv_jax.models.qwen2_vl import QwenImages

    per_row = QwenImages(image_token_id, merge).row_slices(batch)[sl]
    out = {k: v[sl] for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
    out["pixel_values"] = np.concatenate([batch["pixel_values"][a] for a, _ in per_row])
    out["image_grid_thw"] = np.concatenate([batch["image_grid_thw"][b] for _, b in per_row])
    return out


def _worker(nproc: int, pid: int, port: str, model_path: str, out_path: str) -> None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // nproc}"
    import jax

    jax.config.update("jax_num_cpu_devices", 8 // nproc)
    jax.config.update("jax_default_matmul_precision", "highest")
    if nproc > 1:
        os.environ.update(
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(nproc), JAX_PROCESS_ID=str(pid)
        )
    import optax
    from flax import nnx

    sys.path.insert(0, HERE)
    import tiny_models as TM
    from grlhfv_jax import models
    from grlhfv_jax import sharding as S
    from grlhfv_jax.data import pipeline
    from grlhfv_jax.data import world as W
    from grlhfv_jax.trainers import loop, steps

    assert S.initialize_distributed() == (pid, nproc)
    assert jax.device_count() == 8 and jax.process_count() == nproc
    out = {}

    # the data pipeline: this host's block of each global batch (default shard: jax's process index)
    world = W.WorldConfig(sizes=(("grm_train", 11),))
    ds = pipeline.dataset(None, "grm_train", world, seed=4, num_epochs=None, batch_size=4, source="world")
    out["data"] = [
        S.gather_rows(np.asarray([int(r["id"].split("-")[-1]) for r in ds[s]], np.int32)).tolist() for s in range(4)
    ]

    model = models.load_pretrained(model_path)
    mesh = S.make_mesh(MESH)
    S.shard_model(model, mesh)
    cfg = model.config
    tok, merge = cfg.image_token_id, cfg.spatial_merge_size
    full = TM.make_batch(_rows(), pad_side="right", seed=0)
    full = {k: full[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    full["image_grid_thw"] = full["image_grid_thw"].astype(np.int32)
    full["loss_mask"] = full["attention_mask"]
    sl = S.process_slice(GLOBAL_BATCH)
    host = _host_rows(full, sl, tok, merge)

    # the global batch and host_values: every host holds the one-process arrays
    placed = loop.place_batch(model, host)
    assert placed["input_ids"].shape == full["input_ids"].shape
    back = S.host_values(placed)
    for k in ("input_ids", "loss_mask", "image_grid_thw"):
        np.testing.assert_array_equal(back[k], full[k])
    np.testing.assert_array_equal(back["pixel_values"][: len(full["pixel_values"])], full["pixel_values"])

    def flat_params():
        return {
            ".".join(map(str, k)): v
            for k, v in S.host_values({k: v[...] for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}).items()
        }

    def metrics(m):
        return {k: float(v) for k, v in S.host_values(m).items()}

    def new_state(lr):
        state = steps.TrainState(model, optax.sgd(lr))
        S.shard_model(state.optimizer, mesh)
        return state

    # SFT: 2 micro-batches, each with its own images (gathered from both hosts' rows)
    state, out["sft"] = new_state(0.5), []
    for _ in range(SFT_STEPS):
        b = loop.place_batch(model, loop.micro_batch_images(model, host, 2))
        state, m = steps.sft_step(state, b, steps.SFTConfig(num_micro_batches=2))
        out["sft"].append(metrics(m))

    # SFT on a batch in two parts of different widths (stages.sft: judgments + short answers)
    from grlhfv_jax.models.qwen2_vl import QwenImages
    from grlhfv_jax.trainers import grpo as learner

    short = learner.select_rows(full, np.arange(4), QwenImages(tok, merge))
    short = {
        k: (np.pad(v, ((0, 0), (0, 4))) if k in ("input_ids", "attention_mask", "loss_mask") else v)
        for k, v in short.items()
    }  # another width: 12 columns
    b = loop.place_batch(model, {"parts": (host, _host_rows(short, S.process_slice(4), tok, merge)), "window": (0, 0)})
    state, m = steps.sft_step(new_state(0.5), b["parts"], window=b["window"])
    out["sft_parts"] = metrics(m)

    # DPO: rows interleaved as (chosen, rejected); reference log-probs read back to the host first
    ref = S.host_values(steps.compute_sequence_logprobs(model, loop.place_batch(model, host)))
    assert ref.shape == (GLOBAL_BATCH,)
    dpo_host = dict(host, ref_logps=(ref - 0.1 * np.arange(GLOBAL_BATCH, dtype=np.float32))[sl])
    state = new_state(0.5)
    b = loop.place_batch(model, loop.micro_batch_images(model, dpo_host, 2))
    state, m = steps.dpo_step(state, b, steps.DPOConfig(num_micro_batches=2))
    out["dpo"] = metrics(m)
    out["ref_logps"] = ref.tolist()

    # GRPO: old / ref log-probs from the global batch, read back, this host's rows fed again
    old = S.host_values(steps.compute_logprobs(model, loop.place_batch(model, host)))
    assert old.shape == full["input_ids"].shape
    resp = full["attention_mask"].copy()
    resp[:, :3] = 0
    grpo_host = dict(
        host,
        response_mask=resp[sl],
        old_logp=old[sl],
        ref_logp=(old - 0.05 * resp)[sl],
        advantages=np.linspace(-1.0, 1.0, GLOBAL_BATCH, dtype=np.float32)[sl],
    )
    state = new_state(0.5)
    state, m = steps.grpo_step(state, loop.place_batch(model, grpo_host), steps.GRPOConfig(num_micro_batches=2))
    out["grpo"] = metrics(m)

    # rollouts (rollout.group_sampling.engine_rollout: this host's prompts in, this host's rows out, the engine
    # sampling the global batch) and the GRPO learner on them (reference pass, update, rollout figures)
    import types

    from grlhfv_jax.rollout import SamplingParams
    from grlhfv_jax.trainers import grpo as learner

    prompts = TM.make_batch(_rows(), pad_side="left", seed=1)
    prompts = {k: prompts[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    prompts["valid"] = np.ones(GLOBAL_BATCH, np.int32)
    host_prompts = _host_rows(prompts, sl, tok, merge)
    rollout = group_sampling.engine_rollout(model, types.SimpleNamespace(eos_id=2, pad_id=0))
    G = 2
    gen = rollout.generate(host_prompts, SamplingParams(max_new_tokens=4, temperature=1.0, num_samples=G, seed=3))
    gen = group_sampling.cut_at_tokens(
        gen, [TM.IMAGE, TM.VISION_START, TM.VISION_END]
    )  # as group_sampling.sample_groups
    assert gen.tokens.shape == (GLOBAL_BATCH // nproc * G, 4)
    out["rollout"] = {
        "tokens": S.gather_rows(np.asarray(gen.tokens)).tolist(),
        "logprobs": S.gather_rows(np.asarray(gen.logprobs)).tolist(),
    }
    rewards = np.asarray(gen.lengths, np.float32).reshape(-1, G) + np.asarray(gen.tokens)[:, 0].reshape(-1, G) % 3
    state = new_state(0.5)
    out["grpo_update"] = learner.grpo_update(
        state, model, host_prompts, gen, rewards, pad_id=0, cfg=steps.GRPOConfig(num_micro_batches=2)
    )
    for k in [k for k in out["grpo_update"] if k.startswith("time/")]:
        del out["grpo_update"][k]

    # a score-only RM's scores (trainers.scoring.score_batch): this host's rows back
    from grlhfv_jax.stages import judging
    from grlhfv_jax.trainers import scoring

    rm = models.load_pretrained(model_path, mesh=mesh, scalar_head=True)
    scores = scoring.score_batch(
        rm, {k: host[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    )
    assert scores.shape == (GLOBAL_BATCH // nproc,)
    out["rm_scores"] = S.gather_rows(scores).tolist()

    # evaluation figures over records each host holds a share of (records i % count == index):
    # every host reports the figures of all of them (stages.judging.grm_accuracy)
    class _Judge:
        def judge(self, items, params):
            return [f"\\boxed{{{r1[-1]}, {r2[-1]}}}" for _, _, r1, r2 in items]

    recs = [
        {
            "question": f"q{i}",
            "image": None,
            "response_1": f"answer {i % 3}",
            "response_2": f"answer {i * 2 % 5}",
            "overall_response": 1 + i % 2,
            "pair_type": ("minimal", "style")[i // 3 % 2],
        }
        for i in range(12)
    ]
    figures, samples = judging.grm_accuracy(_Judge(), recs[pid::nproc], max_new_tokens=4)
    out["grm_accuracy"] = figures
    assert len(samples) == len(recs)

    out["params"] = {k: v.tolist() for k, v in flat_params().items()}
    from grlhfv_jax.checkpoint import export_hf  # gathers on every host, process 0 writes

    export = os.path.join(os.path.dirname(out_path), f"export_{nproc}")  # one folder: a shared filesystem
    export_hf(model, export, summary={"steps": SFT_STEPS})
    assert os.path.isfile(os.path.join(export, "config.json"))  # on every host, after the export's barrier
    with open(out_path, "w") as f:
        json.dump(out, f)


def _run(nproc: int, model_path: str, tmp) -> list[dict]:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    }
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    outs = [str(tmp / f"out_{nproc}_{p}.json") for p in range(nproc)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(nproc), str(p), port, model_path, outs[p]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in range(nproc)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    results = []
    for o in outs:
        with open(o) as f:
            results.append(json.load(f))
    return results


def _close(a, b, what):
    if isinstance(a, dict):
        assert set(a) == set(b), what
        for k in a:
            _close(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, list) and a and isinstance(a[0], dict):
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{what}[{i}]")
    else:
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), err_msg=what, **TOL)


def test_two_processes_equal_one_process(tmp_path):
    """Same global batches in the same order; same SFT / DPO / GRPO metrics and final parameters."""
    sys.path.insert(0, HERE)
    import tiny_models as TM

    path = TM.save_tiny_model(
        tmp_path / "tiny", "qwen2_vl", text={"num_key_value_heads": 4, "num_hidden_layers": 1}, vision={"depth": 1}
    )
    (one,) = _run(1, path, tmp_path)
    two = _run(2, path, tmp_path)
    assert one["data"] == two[0]["data"] == two[1]["data"]
    assert sorted(sum(one["data"][:3], [])[:11]) == list(range(11))  # an epoch: every record once
    for p, res in enumerate(two):
        assert res == two[0], f"process {p} holds other values than process 0"  # host_values: identical
        _close(res, one, "2 processes vs 1")
    # the exported Hugging Face folder: written by process 0 alone, the same weights as one process's
    from safetensors.numpy import load_file

    exported = [load_file(str(tmp_path / f"export_{n}" / "model.safetensors")) for n in (1, 2)]
    assert set(exported[0]) == set(exported[1]) and len(exported[0]) > 10
    for k in exported[0]:
        np.testing.assert_allclose(exported[1][k], exported[0][k], err_msg=k, **TOL)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
