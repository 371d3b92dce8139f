"""`--dry_run` (grlhfv_jax.dry_run): every paper config plans its memory from the published model
shapes in seconds and fits its default preset; one that cannot fit exits non-zero naming the
largest item; a run with placeholder paths is refused; the estimates match what a tiny model
really holds (live arrays) and what XLA allocates for its compiled train step."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from grlhfv_jax import config as config_schema
from grlhfv_jax import dry_run, models
from grlhfv_jax.models import published
from test_paper_configs import CONFIGS, ROOT, load  # tests/ is on sys.path


def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "grlhfv_jax.main", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    return out, time.time() - t0


@pytest.mark.parametrize("preset", ["", "8chip"])
def test_every_paper_config_passes_the_dry_run_on_its_default_preset_and_one_host(capsys, preset):
    """The default preset (a pod of 40 devices) and one 8-device host (docs/paper_runs.md): all fit."""
    for path in CONFIGS:
        assert dry_run.run(load(path).get_config(preset)) == 0, (path, preset)
        text = capsys.readouterr().out
        lines = text.strip().splitlines()
        result = json.loads(lines[-1])
        assert result["fits"] and result["peak_gb"] > 1.0 and result["device_memory_gb"] == 80.0, path
        for item in dry_run.ITEMS:
            assert any(line.startswith(item) for line in lines), (path, item)
        stage = result["stages"][result["peak_stage"]]["per_device_gb"]
        assert stage["params"] > 0 and stage["optimizer"] > 0 and stage["activations"] > 0, path


def test_cli_dry_run_takes_seconds_and_a_run_that_cannot_fit_exits_non_zero_naming_the_largest_item():
    out, wall = _cli("--config", "configs/paper/grm_qwen25vl_7b.py:1gpu", "--dry_run")
    assert out.returncode == 1, out.stderr[-2000:]
    assert wall < 120, wall
    assert "DOES NOT FIT" in out.stdout
    assert "dry run: the 'grm_rl' stage needs" in out.stdout and "largest item: activations" in out.stdout
    result = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    assert not result["fits"] and result["largest_item"] == "activations"
    ok, _ = _cli("--config", "configs/paper/grm_qwen25vl_7b.py:pod", "--dry_run")
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]


def test_a_run_with_placeholder_paths_is_refused_naming_the_key():
    out, _ = _cli("--config", "configs/paper/dpo_qwen2vl_2b.py:8chip", "--workdir", "/tmp/never_written")
    assert out.returncode != 0
    assert "config error: config.data.files.grm_train.path = '<" in out.stderr
    assert (
        "is a placeholder: set it on the command line (--config.data.files.grm_train.path=...); also "
        "model.policy.path" in out.stderr
    )
    assert not os.path.exists("/tmp/never_written")


def test_published_configs_give_the_documented_parameter_counts():
    """docs/models.md ("Memory"): parameter counts of the four checkpoints, from the table alone."""
    want = {
        "Qwen2-VL-2B-Instruct": 2_208_985_600,
        "Qwen2-VL-7B-Instruct": 8_291_375_616,
        "Qwen2.5-VL-3B-Instruct": 3_754_622_976,
        "Qwen2.5-VL-7B-Instruct": 8_292_166_656,
        "llava-1.5-7b-hf": 7_063_427_072,
    }  # transformers' own count (tests/test_models_llava.py)
    for name, n in want.items():
        with dry_run._quiet_tracer_errors():
            m = nnx.eval_shape(lambda: models.from_config(published.hf_config(name), rngs=nnx.Rngs(0)))
        assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param))) == n, name
    with pytest.raises(KeyError, match="Qwen2-VL-72B"):
        published.hf_config("Qwen2-VL-72B")


@pytest.mark.parametrize("remat", [False, True])
def test_estimates_match_a_tiny_model_live_arrays_and_its_compiled_step(remat):
    """Parameters + optimizer state: within 20% of the bytes of the live arrays after building the
    model and its optimizer (sum of nbytes over the train state). Activations + gradients of one
    SFT step: within 0.8-1.25 of XLA's temp_size_in_bytes of the compiled step on CPU."""
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import demo

    import tiny_models as tm  # tests/ is on sys.path
    from grlhfv_jax.rl.logprobs import window_start_and_length
    from grlhfv_jax.trainers import loop, steps

    B, T = 8, 128
    hf = tm.tiny_hf_config("qwen2_vl", text=dict(vocab_size=512)).to_dict()
    c = demo.get_config("smoke")
    c.stages = ("sft",)
    del c.sft["grm"]
    c.sft.policy.update(batch_size=B, max_len=T, data="best", pretrained_vision=False, freeze=[])
    c.model.policy.update(hf_config=hf, remat=remat)
    full = config_schema.validate(c)
    plan = dry_run.plan_stage(full, "sft")

    model = models.from_config(hf, rngs=nnx.Rngs(0), remat=remat)
    state = loop.make_train_state(model, full.sft.policy, 10)
    live = sum(x.nbytes for x in jax.tree.leaves(nnx.state(state)))
    est = plan.total["params"] + plan.total["optimizer"]
    assert 0.8 <= est / live <= 1.2, (est, live)

    ids = np.random.default_rng(0).integers(3, 90, (B, T)).astype(np.int32)
    loss_mask = np.ones_like(ids)
    loss_mask[:, : T // 4] = 0
    batch = dict(input_ids=ids, attention_mask=np.ones_like(ids), loss_mask=loss_mask)
    batch["window_start"], window = window_start_and_length(loss_mask)
    temp = steps.sft_step.lower(state, batch, steps.SFTConfig(), window).compile().memory_analysis().temp_size_in_bytes
    m = dry_run.model_shape(full.model.policy)
    act = dry_run.activation_bytes(m, B, T, window) + plan.total["gradients"]
    assert 0.8 <= act / temp <= 1.25, (act, temp)


def test_rollout_in_calls_divides_the_rollout_prefill_and_kv_cache():
    c = load(os.path.join(ROOT, "configs", "paper", "grm_qwen25vl_7b.py")).get_config("1gpu")
    plans = []
    for calls in (1, 5):
        c.grm_rl.rollout_num_micro_batches = calls
        plans.append(dry_run.plan_stage(config_schema.validate(c), "grm_rl"))
    one, five = plans
    import re

    gb = [float(re.search(r"rollout \((\d+) calls?\) ([0-9.]+) GB", p.notes[-1]).group(2)) for p in plans]
    # the prefill (text and tower) and the cache of 72 prompts instead of 360; only the vision
    # tower's one piece of attention scores (vision_chunk) does not shrink
    assert 4.5 <= gb[0] / gb[1] <= 5.0, gb


def test_dry_run_validates_first_and_names_a_model_it_cannot_shape():
    from grlhfv_jax.config import ConfigError

    c = load(os.path.join(ROOT, "configs", "paper", "policy_qwen2vl_2b.py")).get_config("8chip")
    c.policy_rl.ref_num_micro_batches = 7
    with pytest.raises(
        ConfigError,
        match=r"config\.policy_rl\.ref_num_micro_batches = 7 must divide the prompts "
        r"per step \(360\)",
    ):
        dry_run.run(c)
    c = load(os.path.join(ROOT, "configs", "paper", "policy_qwen2vl_2b.py")).get_config("8chip")
    del c.model.grm["hf_config"]
    with pytest.raises(ConfigError, match=r"config\.model\.grm has neither a checkpoint folder"):
        dry_run.run(c)


@pytest.mark.parametrize(
    "name,section,key,phase",
    [
        ("policy_qwen25vl_7b", "policy_rl", "judge_prompts_per_call", "judging"),
        ("rm_grpo_qwen25vl_7b", "policy_rl_rm", "score_rows_per_call", "RM scoring"),
    ],
)
def test_halving_the_judging_or_scoring_call_halves_that_phase(name, section, key, phase):
    import re

    c = load(os.path.join(ROOT, "configs", "paper", f"{name}.py")).get_config("1gpu")
    gb = []
    for size in (16, 8) if key == "judge_prompts_per_call" else (320, 160):
        c[section][key] = size
        note = dry_run.plan_stage(config_schema.validate(c), section).notes[-1]
        gb.append(float(re.search(rf"; {phase} ([0-9.]+) GB", note).group(1)))
    # half (judging: the sampler's tower is a call of its own, smaller than the prefill; RM scoring:
    # but for the tower's one piece of attention scores, vision_chunk, which stays)
    assert gb[0] / 2 <= gb[1] <= gb[0] / 2 * 1.02, gb


def _tower_shape(depth, embed, heads, patches, chunk, remat):
    """The dry run's shape of a tower alone (bench vision's: a one-layer text model, not counted)."""
    return dry_run.ModelShape(
        params=0,
        vision_params=0,
        layers=1,
        hidden=64,
        intermediate=64,
        heads=2,
        kv_heads=1,
        head_dim=32,
        vocab=256,
        param_bytes=4,
        compute_bytes=4,
        remat=remat,
        vision_depth=depth,
        vision_hidden=embed,
        vision_heads=heads,
        vision_intermediate=4 * embed,
        vision_block=patches,
        vision_chunk=chunk,
    )


def test_vision_tower_estimate_matches_its_compiled_forward_and_backward():
    """`dry_run.vision_bytes` (no remat: XLA:CPU does not honour the tower's remat, docs/performance.md)
    within 0.6-1.5 of XLA's temp_size_in_bytes of the tower's compiled forward, and of its forward +
    gradient (a trained tower), per frame whole and in pieces of one image (`vision_chunk`); 8 images
    of 256 patches, width 128, 2 blocks (the figures: `python -m grlhfv_jax.bench vision ...`)."""
    from grlhfv_jax import bench

    images, patches, embed, heads, depth = 8, 256, 128, 4, 2
    for backward in (False, True):
        res = bench.main(
            [
                "vision",
                "--images",
                str(images),
                "--patches",
                str(patches),
                "--depth",
                str(depth),
                "--embed",
                str(embed),
                "--heads",
                str(heads),
                "--chunk",
                str(patches),
                "--skip-dense",
            ]
            + (["--backward"] if backward else [])
        )
        for chunk, key in ((0, "per_frame_temp_bytes"), (patches, "per_frame_chunked_temp_bytes")):
            m = _tower_shape(depth, embed, heads, patches, chunk, remat=False)
            ratio = dry_run.vision_bytes(m, images, patches, backward=backward) / res[key]
            assert 0.6 <= ratio <= 1.5, (backward, chunk, ratio)


def test_vision_tower_estimate_with_remat_bounds_the_scanned_tower():
    """With remat, `dry_run.vision_bytes` is an upper bound (within 2x) of XLA's temp of a trained
    tower's forward + gradient when its blocks run under a scan (`scan_vision`, the paper configs':
    XLA:CPU honours the remat there), per frame whole and in pieces; 8 images of 256 patches, width
    128, 4 blocks. Without remat the tower holds every block's activations: 2.2-2.6x the figure."""
    from grlhfv_jax import bench

    images, patches, embed, heads, depth = 8, 256, 128, 4, 4
    res = bench.main(
        [
            "vision",
            "--images",
            str(images),
            "--patches",
            str(patches),
            "--depth",
            str(depth),
            "--embed",
            str(embed),
            "--heads",
            str(heads),
            "--chunk",
            str(patches),
            "--skip-dense",
            "--backward",
            "--remat",
            "--scan-vision",
        ]
    )
    for chunk, key in ((0, "per_frame_temp_bytes"), (patches, "per_frame_chunked_temp_bytes")):
        m = _tower_shape(depth, embed, heads, patches, chunk, remat=True)
        ratio = dry_run.vision_bytes(m, images, patches, backward=True) / res[key]
        assert 1.0 <= ratio <= 2.0, (chunk, ratio)


def test_the_plan_is_what_each_stage_declares(monkeypatch):
    """plan_stage prices a stage's own `memory_phases` (no copy of the stage's arithmetic): a
    declared phase with twice the rows and images needs more activation memory, the same parameters;
    every stage declares."""
    import dataclasses

    from grlhfv_jax import stages
    from grlhfv_jax.stages import dpo

    assert all(callable(getattr(stages.module(name), "memory_phases", None)) for name in stages.STAGES)
    c = config_schema.validate(load(os.path.join(ROOT, "configs", "paper", "dpo_qwen2vl_2b.py")).get_config("8chip"))
    before = dry_run.plan_stage(c, "dpo")
    declared = dpo.memory_phases(c, "dpo")

    def doubled(config, section):
        (mem,) = declared
        return [
            dataclasses.replace(
                mem, phases=tuple(dataclasses.replace(p, rows=2 * p.rows, images=2 * p.images) for p in mem.phases)
            )
        ]

    monkeypatch.setattr(dpo, "memory_phases", doubled)
    after = dry_run.plan_stage(c, "dpo")
    assert after.per_device["activations"] > 1.5 * before.per_device["activations"]  # linear, but chunked towers
    assert after.per_device["params"] == before.per_device["params"] > 0
    assert dry_run.plan_stage(c, "data") is None
