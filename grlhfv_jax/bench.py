"""Benchmarks. Each subcommand prints ONE JSON object on stdout (progress goes to stderr).

    python -m grlhfv_jax.bench rollout [--batch 16 --prompt-tokens 64 --image-size 224 --new-tokens 128 ...]
    python -m grlhfv_jax.bench vision [--images 32 --patches 1024 --depth 2 --embed 1280 --heads 16]
                                      [--backward --remat --chunk 1024 --skip-dense]
    python -m grlhfv_jax.bench grpo [--prompts 16 --group 4 --prompt-tokens 120 --new-tokens 36 ...]
    python -m grlhfv_jax.bench judge [--tiny] [--ns 3 5 7 --prompts 8 --answer-tokens 128 --new-tokens 256 ...]
    python -m grlhfv_jax.bench train [--tiny] [--memory-only] [--rows 32 --tokens 1024 --remat --logits-chunk 256 ...]

rollout: generated tokens/s of our sampler (grlhfv_jax.rollout.generate) and of transformers'
PyTorch `generate` (KV cache) on the same randomly initialised Qwen2-VL config and the same
weights (the torch model is saved and loaded into ours), same batch (an image + `prompt_tokens`
text tokens per row), same new-token count (no EOS: every row generates all tokens), same number
of CPU threads. Our compile time is excluded from our rate and reported separately. On a GPU /
TPU it also reports decode tokens/s and the fraction of the HBM-bandwidth roofline:
(bytes of the decoder's params + the KV cache read per step) / step time / peak bandwidth.

grpo: one GRPO mini-batch (reference log-probs + `steps.grpo_step`) on G responses per prompt,
with every row run whole (group=1) and with each prompt run once per group (group=G,
`model.shared_prompt_hidden`): seconds per call (best of --repeats after compiling) and XLA's
temporary memory of the step. Defaults: the demo's stage-1 mini-batch and model.

train: one GRPO update of a Qwen2-VL-2B-shaped model (32 rows x 1024 tokens, a 448 x 448 image per
row): compile time, XLA's temporary memory, step time, tokens/s, MFU; `--remat --remat-policy`,
`--logits-chunk` and `--vision-chunk` are the memory choices of `config.model.*`; `--memory-only`
allocates nothing.

judge: the GRM's n(n-1) ordered pairs per prompt judged with the shared prefix (image and question
prefilled once per prompt) vs each pair's full prompt, n in {3, 5, 7}: seconds, pairs/s, same tokens.

vision: temporary memory of one vision-tower forward (`--backward`: with its gradient, a trained
tower) with dense attention over all patches of the call vs per-frame (banded) attention, and per
frame in pieces of `--chunk` query patches (`vision_chunk`), from XLA's buffer assignment (no
weights allocated).

Add a subcommand: write `def bench_x(args) -> dict`, an `_add_x(subparsers)` for its options,
and register both in `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

# Peak HBM bandwidth (bytes/s) by jax `device_kind` prefix (vendor data sheets).
PEAK_BANDWIDTH = {
    "NVIDIA H200": 4.8e12,
    "NVIDIA H100 80GB HBM3": 3.35e12,  # SXM
    "NVIDIA H100 PCIe": 2.0e12,
    "NVIDIA H100 NVL": 3.9e12,
    "NVIDIA H100": 3.35e12,
    "NVIDIA A100-SXM4-80GB": 2.039e12,
    "NVIDIA A100-SXM4-40GB": 1.555e12,
    "NVIDIA A100": 1.555e12,
    "NVIDIA L4": 0.3e12,
    "TPU v4": 1.2e12,
    "TPU v5 lite": 0.819e12,
    "TPU v5e": 0.819e12,
    "TPU v5p": 2.765e12,
    "TPU v5": 2.765e12,
    "TPU v6 lite": 1.64e12,
    "TPU v6e": 1.64e12,
}


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def peak_bandwidth(device_kind: str):
    for k in sorted(PEAK_BANDWIDTH, key=len, reverse=True):
        if device_kind.startswith(k):
            return PEAK_BANDWIDTH[k]
    return None


# ----------------------------------------------------------------------------- rollout


def _qwen2vl_config(args, *, max_positions: int, tied: bool):
    """A Qwen2-VL config from the command line's shape arguments (text, vision, vocab), its M-RoPE
    sections from the head size (`_mrope`), the last 4 ids of the vocabulary its image / video
    specials."""
    import transformers

    text = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters={"rope_type": "default", "mrope_section": _mrope(args.hidden // args.heads), "rope_theta": 1e6},
    )
    vision = dict(
        depth=args.vision_layers,
        embed_dim=args.vision_hidden,
        hidden_size=args.hidden,
        num_heads=args.vision_heads,
        mlp_ratio=4,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return transformers.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=args.vocab - 4,
        video_token_id=args.vocab - 3,
        vision_start_token_id=args.vocab - 2,
        vision_end_token_id=args.vocab - 1,
        tie_word_embeddings=tied,
    )


def rollout_hf_config(args):
    """A Qwen2-VL config of about 50M parameters at the defaults (text 8 x 512, vocab 32768 tied)."""
    return _qwen2vl_config(args, max_positions=4096, tied=True)


def rollout_batch(args, cfg):
    """Left-padded batch: each row = <vision_start> <image_pad>*n <vision_end> + prompt_tokens random text."""
    import numpy as np

    rng = np.random.default_rng(0)
    side = args.image_size // 14
    side -= side % 2
    grid = (1, side, side)
    n_img = side * side // 4
    rows = []
    for _ in range(args.batch):
        text = rng.integers(3, args.vocab - 8, size=args.prompt_tokens).tolist()
        img = (
            [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id]
            if args.image_size
            else []
        )
        rows.append(img + text)
    T = max(len(r) for r in rows)
    ids = np.zeros((args.batch, T), np.int32)
    mask = np.zeros((args.batch, T), np.int32)
    for b, r in enumerate(rows):
        ids[b, T - len(r) :] = r
        mask[b, T - len(r) :] = 1
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == cfg.image_token_id).astype(np.int32),
    }
    if args.image_size:
        patch_dim = 3 * 2 * 14 * 14
        batch["pixel_values"] = rng.standard_normal((args.batch * side * side, patch_dim)).astype(np.float32)
        batch["image_grid_thw"] = np.asarray([grid] * args.batch, np.int64)
    return batch


def _time_hf(model, batch, args):
    import torch

    kw = {
        k: torch.as_tensor(v, dtype=torch.long)
        for k, v in batch.items()
        if k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")
    }
    if "pixel_values" in batch:
        kw["pixel_values"] = torch.as_tensor(batch["pixel_values"]).to(next(model.parameters()).dtype)
    gen = dict(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        eos_token_id=None,
        pad_token_id=0,
        use_cache=True,
    )
    if args.temperature > 0:
        gen.update(do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0)
    else:
        gen.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    times = []
    with torch.inference_mode():
        for i in range(args.hf_repeats + 1):
            torch.manual_seed(i)
            t0 = time.perf_counter()
            out = model.generate(**kw, **gen)
            times.append(time.perf_counter() - t0)
            _log(f"hf generate #{i}: {times[-1]:.2f}s")
    n_new = out.shape[1] - batch["input_ids"].shape[1]
    assert n_new == args.new_tokens, (n_new, args.new_tokens)
    return min(times[1:]), times[0]


def _time_ours(model, batch, args):
    import jax
    from flax import nnx

    from grlhfv_jax.rollout import engine

    split = nnx.split(model)
    kw = dict(max_new_tokens=args.new_tokens, temperature=args.temperature, eos_token_id=None, model_split=split)
    t0 = time.perf_counter()
    out = engine.generate(model, batch, rng=jax.random.key(0), **kw)
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    _log(f"ours first call (compile + run): {first:.2f}s")
    totals, prefills, decodes = [], [], []
    for i in range(args.repeats):
        # whole call (what an RL loop pays) ...
        t0 = time.perf_counter()
        out = engine.generate(model, batch, rng=jax.random.key(i + 1), **kw)
        jax.block_until_ready(out)
        totals.append(time.perf_counter() - t0)
        # ... and its two stages
        buf = engine.bucket_length(args.new_tokens)
        t0 = time.perf_counter()
        cache, logits, deltas, first_slot = engine.prefill(split, batch, layout=model.image_layout, cache_len_extra=buf)
        jax.block_until_ready((cache, logits))
        t1 = time.perf_counter()
        out = engine.decode(
            split,
            cache,
            logits,
            deltas,
            first_slot=first_slot,
            max_new_tokens=args.new_tokens,
            buf_len=buf,
            temperature=args.temperature,
            top_p=1.0,
            top_k=0,
            eos_token_id=None,
            rng=jax.random.key(i + 1),
        )
        jax.block_until_ready(out)
        t2 = time.perf_counter()
        prefills.append(t1 - t0)
        decodes.append(t2 - t1)
        _log(f"ours #{i}: total {totals[-1]:.2f}s (prefill {prefills[-1]:.3f}s, decode {decodes[-1]:.2f}s)")
    assert int(out.lengths.min()) == args.new_tokens
    return dict(
        total=min(totals),
        first=first,
        prefill=min(prefills),
        decode=min(decodes),
        cache_bytes=sum(a.size * a.dtype.itemsize for a in jax.tree.leaves((cache["k"], cache["v"]))),
    )


def bench_rollout(args) -> dict:
    import jax
    import jax.numpy as jnp

    from grlhfv_jax.models import load_pretrained

    threads = args.threads or cpu_threads()
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    cfg = rollout_hf_config(args)
    batch = rollout_batch(args, cfg)
    res = {
        "bench": "rollout",
        "device": device.device_kind,
        "platform": device.platform,
        "cpu_threads": threads,
        "batch": args.batch,
        "prompt_text_tokens": args.prompt_tokens,
        "image_size": args.image_size,
        "prompt_len": int(batch["input_ids"].shape[1]),
        "new_tokens": args.new_tokens,
        "temperature": args.temperature,
        "dtype": args.dtype,
        "layers": args.layers,
        "scan_layers": args.scan_layers,
        "scan_vision": args.scan_vision,
        "load_avg_1min_start": os.getloadavg()[0],
    }

    try:
        import torch
    except ImportError:
        raise SystemExit(
            "bench rollout times transformers' PyTorch generate beside ours and needs torch, "
            "which the package does not install: pip install -e '.[test]' (pins a CPU build)"
        ) from None
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf = transformers.Qwen2VLForConditionalGeneration(cfg).eval()
    n_params = sum(p.numel() for p in hf.parameters())
    n_text = sum(p.numel() for n, p in hf.named_parameters() if "visual" not in n)
    res.update(params=n_params, params_text=n_text)
    _log(f"model: {n_params / 1e6:.1f}M params ({n_text / 1e6:.1f}M text), prompt len {res['prompt_len']}")
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = load_pretrained(
            d, dtype=getattr(jnp, args.dtype), scan_layers=args.scan_layers, scan_vision=args.scan_vision
        )
    if args.dtype == "bfloat16":  # the same dtype on both sides
        hf = hf.to(torch.bfloat16)

    ours = _time_ours(model, batch, args)
    n_tok = args.batch * args.new_tokens
    res.update(
        ours_tokens_per_s=n_tok / ours["total"],
        ours_seconds=ours["total"],
        ours_compile_s=max(ours["first"] - ours["total"], 0.0),
        ours_prefill_s=ours["prefill"],
        ours_decode_s=ours["decode"],
        ours_decode_tokens_per_s=args.batch * (args.new_tokens - 1) / ours["decode"],
        ours_step_ms=1e3 * ours["decode"] / max(args.new_tokens - 1, 1),
    )
    if not on_cpu:
        itemsize = jnp.dtype(args.dtype).itemsize
        param_bytes = n_text * itemsize  # decoder + (tied) LM head; the vision tower is not read in decode
        step_bytes = param_bytes + ours["cache_bytes"]
        bw = args.peak_bandwidth or peak_bandwidth(device.device_kind)
        res.update(
            step_bytes=step_bytes,
            peak_bandwidth=bw,
            roofline_fraction=(step_bytes / (ours["decode"] / max(args.new_tokens - 1, 1)) / bw) if bw else None,
        )
    if not on_cpu and not args.hf_on_cpu:
        res["hf"] = "skipped: the torch build is CPU-only; pass --hf-on-cpu to time it anyway"
    elif not args.skip_hf:
        hf_t, hf_first = _time_hf(hf, batch, args)
        res.update(
            hf_tokens_per_s=n_tok / hf_t,
            hf_seconds=hf_t,
            hf_first_call_s=hf_first,
            speedup=(n_tok / ours["total"]) / (n_tok / hf_t),
        )
    res["load_avg_1min_end"] = os.getloadavg()[0]
    return res


def _add_rollout(sub):
    p = sub.add_parser("rollout", help="sampler tokens/s vs transformers generate")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64, help="text tokens per prompt (after the image)")
    p.add_argument("--image-size", type=int, default=224, help="square image side in pixels; 0 = text only")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--vision-hidden", type=int, default=256)
    p.add_argument("--vision-heads", type=int, default=4)
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="compute dtype of both models (ours: weights and KV cache; transformers: .to(dtype))",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed calls of ours (best is reported)")
    p.add_argument("--hf-repeats", type=int, default=2, help="timed calls of transformers after a warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPUs XLA uses)")
    p.add_argument("--peak-bandwidth", type=float, default=0.0, help="bytes/s; default from the device kind")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--hf-on-cpu", action="store_true", help="on an accelerator, still time transformers (CPU)")
    p.add_argument("--scan-layers", action="store_true", help="our decoder layers stacked and run by a scan")
    p.add_argument("--scan-vision", action="store_true", help="our vision blocks stacked and run by a scan")
    return p


def vision_hf_config(args) -> dict:
    """A Qwen2-VL config whose vision tower has the given shape (Qwen2-VL-2B's: embed 1280, 16
    heads, MLP ratio 4) and a one-layer text model (not run)."""
    return dict(
        model_type="qwen2_vl",
        image_token_id=251,
        video_token_id=252,
        vision_start_token_id=253,
        vision_end_token_id=254,
        text_config=dict(
            vocab_size=256,
            hidden_size=args.out_hidden,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            rms_norm_eps=1e-6,
            max_position_embeddings=1024,
            eos_token_id=2,
            pad_token_id=0,
            rope_parameters=dict(rope_type="default", mrope_section=[4, 6, 6], rope_theta=1e6),
        ),
        vision_config=dict(
            depth=args.depth,
            embed_dim=args.embed,
            hidden_size=args.out_hidden,
            num_heads=args.heads,
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
    )


def bench_vision(args) -> dict:
    """Temporary memory (XLA's buffer assignment) of one vision-tower forward (with --backward: and
    its gradient w.r.t. the tower's parameters, as a trained tower's step needs), dense attention over
    every patch of the call vs per frame (`vision_block` = the patches of one image), and per frame
    in pieces of `--chunk` query patches when given; with --time, the per-frame forward's time on this
    machine. Compiled from shapes: no weights allocated. With --devices k > 1: the model on a mesh
    of k devices (fsdp k; fake CPU devices here), the figures per device (the tower splits its
    patches over them)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from grlhfv_jax import models, sharding

    side = int(round(args.patches**0.5))
    if side * side != args.patches or side % 2:
        raise SystemExit(f"--patches {args.patches}: expected the square of an even number (e.g. 1024 = 32 x 32)")
    n = args.images * args.patches
    dtype = getattr(jnp, args.dtype)
    grid = np.tile([[1, side, side]], (args.images, 1)).astype(np.int32)
    pv = jax.ShapeDtypeStruct((n, 3 * 2 * 14 * 14), dtype)
    out = dict(
        images=args.images,
        patches_per_image=args.patches,
        depth=args.depth,
        embed=args.embed,
        heads=args.heads,
        dtype=args.dtype,
        backward=args.backward,
        remat=args.remat,
        chunk=args.chunk,
        scan_vision=args.scan_vision,
        platform=jax.devices()[0].platform,
        jax=jax.__version__,
        devices=args.devices,
    )
    mesh = sharding.make_mesh((1, args.devices, 1)) if args.devices > 1 else None
    variants = [("dense", 0, 0)] if not args.skip_dense else []
    variants += [("per_frame", args.patches, 0)] + (
        [("per_frame_chunked", args.patches, args.chunk)] if args.chunk else []
    )
    for name, block, chunk in variants:
        abstract = nnx.eval_shape(
            lambda b=block, c=chunk: models.from_config(
                vision_hf_config(args),
                dtype=dtype,
                vision_block=b,
                vision_chunk=c,
                remat=args.remat,
                scan_vision=args.scan_vision,
            )
        )
        sharding.set_activation_mesh(abstract, mesh)
        graphdef, state = nnx.split(abstract)
        shardings = None
        if mesh is not None:  # parameters as a run places them; images replicated
            rep_ = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            shardings = (sharding.model_shardings(abstract, mesh), rep_, rep_)

        def encode(st, x, g, graphdef=graphdef):
            if not args.backward:
                return nnx.merge(graphdef, st).encode_images(x, g)
            # a trained tower: the gradient of a loss of its output w.r.t. its parameters
            return jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s).encode_images(x, g).astype(jnp.float32)))(st)

        _log(f"[vision] compiling {name} ({n} patches)")
        t0 = time.perf_counter()
        compiled = (
            jax.jit(encode, in_shardings=shardings)
            .lower(state, pv, jax.ShapeDtypeStruct(grid.shape, jnp.int32))
            .compile()
        )
        out[f"{name}_compile_s"] = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        out[f"{name}_temp_bytes"] = int(mem.temp_size_in_bytes)
        _log(
            f"[vision] {name}: temp {mem.temp_size_in_bytes / 1e9:.2f} GB, compiled in {out[f'{name}_compile_s']:.1f} s"
        )
        if args.time and block and mesh is None:
            real = nnx.split(
                models.from_config(
                    vision_hf_config(args),
                    dtype=dtype,
                    vision_block=block,
                    vision_chunk=chunk,
                    remat=args.remat,
                    scan_vision=args.scan_vision,
                )
            )[1]
            x = jnp.asarray(np.random.default_rng(0).standard_normal(pv.shape), dtype)
            jax.block_until_ready(compiled(real, x, grid))
            t = time.perf_counter()
            for _ in range(args.time):
                jax.block_until_ready(compiled(real, x, grid))
            out[f"{name}_forward_s"] = (time.perf_counter() - t) / args.time
    if "dense_temp_bytes" in out:
        out["temp_ratio_dense_over_per_frame"] = out["dense_temp_bytes"] / max(out["per_frame_temp_bytes"], 1)
    if args.chunk:
        out["temp_ratio_per_frame_over_chunked"] = out["per_frame_temp_bytes"] / max(
            out["per_frame_chunked_temp_bytes"], 1
        )
    return out


def _add_vision(sub):
    p = sub.add_parser("vision", help="vision-tower memory: dense vs per-frame attention")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--patches", type=int, default=1024, help="patches per image (a square grid)")
    p.add_argument("--depth", type=int, default=2, help="vision blocks (the scores of one block dominate)")
    p.add_argument("--embed", type=int, default=1280)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--out-hidden", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--time", type=int, default=0, help="timed forwards of the per-frame tower (0: memory only)")
    p.add_argument("--backward", action="store_true", help="forward + gradient w.r.t. the tower (a trained tower)")
    p.add_argument("--remat", action="store_true", help="rematerialise each vision block")
    p.add_argument("--chunk", type=int, default=0, help="also per frame in pieces of this many query patches")
    p.add_argument("--scan-vision", action="store_true", help="the blocks stacked and run by a scan (compile one)")
    p.add_argument("--skip-dense", action="store_true", help="leave out dense attention (its memory is quadratic)")
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="> 1: on a mesh of this many devices (fake CPU ones here); memory per device",
    )
    return p


# ------------------------------------------------------------------------------------ grpo


def bench_grpo(args) -> dict:
    """Seconds per GRPO mini-batch (reference log-probs + one `steps.grpo_step`) and the step's
    temporary memory, rows run whole (group 1) vs prompts shared by their G rows (group G)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from grlhfv_jax import models
    from grlhfv_jax.models.qwen2_vl.model import QwenImages
    from grlhfv_jax.trainers import grpo as learner
    from grlhfv_jax.trainers import steps

    cfg = rollout_hf_config(args)
    batch_args = argparse.Namespace(**vars(args), batch=args.prompts)
    prompts = rollout_batch(batch_args, cfg)
    prompts.pop("mm_token_type_ids")
    P, G, R = args.prompts, args.group, args.new_tokens
    rng = np.random.default_rng(0)
    rows = learner.repeat_rows(prompts, G, QwenImages(int(cfg.image_token_id), 2))
    b = learner.training_rows(rows, rng.integers(3, args.vocab - 8, (P * G, R)), np.full(P * G, R), pad_id=0)
    Tp = prompts["input_ids"].shape[1]
    b["window_start"] = np.full(P * G, Tp, np.int32)
    mask = b["response_mask"].astype(np.float32)
    b["old_logp"] = -3.0 * mask
    b["ref_logp"] = -3.0 * mask
    b["advantages"] = rng.normal(size=P * G).astype(np.float32)
    jb = {k: jnp.asarray(v) for k, v in b.items()}
    ref_keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "window_start")
    dtype = getattr(jnp, args.dtype)
    out = dict(
        prompts=P,
        group=G,
        prompt_tokens=Tp,
        new_tokens=R,
        rows=P * G,
        platform=jax.devices()[0].platform,
        threads=cpu_threads(),
    )
    for g in (1, G):
        ref = models.from_config(cfg.to_dict(), rngs=nnx.Rngs(0), dtype=dtype)
        state = steps.TrainState(
            models.from_config(cfg.to_dict(), rngs=nnx.Rngs(0), dtype=dtype),
            optax.sgd(1e-6),
            frozen_vision=args.frozen_vision,
        )
        gcfg = steps.GRPOConfig(num_micro_batches=args.micro_batches)

        def one_call(state):
            lp = steps.compute_logprobs(ref, {k: jb[k] for k in ref_keys}, window=R, group=g)
            _, met = steps.grpo_step(state, dict(jb, ref_logp=lp), gcfg, window=R, group=g)
            return jax.block_until_ready(met["loss"])

        t0 = time.perf_counter()
        one_call(state)
        out[f"group{g}_first_call_s"] = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            one_call(state)
            times.append(time.perf_counter() - t0)
        out[f"group{g}_s"] = min(times)
        lowered = steps.grpo_step.lower(state, dict(jb), gcfg, window=R, group=g)
        out[f"group{g}_step_temp_bytes"] = int(lowered.compile().memory_analysis().temp_size_in_bytes)
        _log(f"[grpo] group {g}: {out[f'group{g}_s']:.3f} s per mini-batch")
    out["speedup"] = out["group1_s"] / out[f"group{G}_s"]
    if args.micro_batches > 1 and "pixel_values" in b:  # the step's images split by micro-batch (group G)
        from grlhfv_jax.trainers import loop

        split = {k: jnp.asarray(v) for k, v in loop.micro_batch_images(state.model, b, args.micro_batches, G).items()}
        for name, bb in (("whole_images_step_s", jb), ("split_images_step_s", split)):  # the step alone
            times = []
            for _ in range(args.repeats + 1):  # the first call may compile
                t0 = time.perf_counter()
                jax.block_until_ready(steps.grpo_step(state, bb, gcfg, window=R, group=G)[1]["loss"])
                times.append(time.perf_counter() - t0)
            out[name] = min(times[1:])
        lowered = steps.grpo_step.lower(state, split, gcfg, window=R, group=G)
        out["split_images_step_temp_bytes"] = int(lowered.compile().memory_analysis().temp_size_in_bytes)
        _log(
            f"[grpo] step alone: {out['whole_images_step_s']:.3f} s, images split by micro-batch: "
            f"{out['split_images_step_s']:.3f} s"
        )
    return out


def _add_grpo(sub):
    p = sub.add_parser("grpo", help="GRPO mini-batch time and memory: rows whole vs prompts shared by their group")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=4, help="responses per prompt (G)")
    p.add_argument("--prompt-tokens", type=int, default=120, help="text tokens per prompt (after the image)")
    p.add_argument("--image-size", type=int, default=56, help="square image side in pixels; 0 = text only")
    p.add_argument("--new-tokens", type=int, default=36, help="response tokens per row")
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--frozen-vision", action="store_true", help="the vision tower frozen (no backward through it)")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--vision-heads", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5)
    return p


# ------------------------------------------------------------------------------------ train

# Peak dense matmul FLOP/s (bf16, no sparsity) by jax `device_kind` prefix (vendor data sheets).
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,  # SXM; the PCIe card is lower
    "NVIDIA A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def train_hf_config(args):
    """A Qwen2-VL config: Qwen2-VL-2B's shape at the defaults (`--tiny`: a few-million-parameter one)."""
    return _qwen2vl_config(args, max_positions=32768, tied=args.tied)


def _mrope(head_dim: int) -> list[int]:
    half = head_dim // 2
    t = half // 4
    return [t, (half - t) // 2, half - t - (half - t) // 2]


TINY_TRAIN = dict(
    rows=4,
    tokens=64,
    new_tokens=16,
    image_size=56,
    vocab=2048,
    hidden=64,
    intermediate=128,
    layers=2,
    heads=4,
    kv_heads=2,
    vision_layers=1,
    vision_hidden=32,
    vision_heads=2,
    micro_batches=2,
    repeats=2,
)


def bench_train(args) -> dict:
    """One GRPO update (`steps.grpo_step`: the policy loss on the response window, KL to given
    reference log-probs) on `--rows` rows of `--tokens` tokens (one image of `--image-size` pixels,
    text, `--new-tokens` response tokens): XLA's memory of the compiled step (temp = activations,
    gradients and the update's scratch; arguments = params, optimizer state, batch), compile time and,
    unless `--memory-only`, seconds per step, tokens/s and MFU (6 x params x tokens / time / peak
    FLOP/s of the device; None on a CPU). `--memory-only` compiles from shapes: no weights allocated."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from grlhfv_jax import models
    from grlhfv_jax.trainers import steps

    if args.tiny:  # the tiny sizes, except those given on the command line
        defaults = vars(_add_train(argparse.ArgumentParser().add_subparsers()).parse_args([]))
        for k, v in TINY_TRAIN.items():
            if getattr(args, k) == defaults[k]:
                setattr(args, k, v)
    cfg = train_hf_config(args)
    side = args.image_size // 14
    side -= side % 2
    n_img = side * side // 4 if args.image_size else 0
    T, R, B = args.tokens, args.new_tokens, args.rows
    if T - R - n_img - 2 < 1:
        raise SystemExit(f"--tokens {T} leaves no room for the image ({n_img} tokens) and --new-tokens {R}")
    rng = np.random.default_rng(0)
    ids = rng.integers(3, args.vocab - 8, (B, T)).astype(np.int32)
    if n_img:
        ids[:, 0], ids[:, 1 : 1 + n_img], ids[:, 1 + n_img] = (
            cfg.vision_start_token_id,
            cfg.image_token_id,
            cfg.vision_end_token_id,
        )
    mask = np.zeros((B, T), np.float32)
    mask[:, T - R :] = 1.0
    batch = dict(
        input_ids=ids,
        attention_mask=np.ones((B, T), np.int32),
        response_mask=mask,
        old_logp=-3.0 * mask,
        ref_logp=-3.0 * mask,
        advantages=rng.normal(size=B).astype(np.float32),
        window_start=np.full(B, T - R, np.int32),
    )
    if n_img:
        batch["pixel_values"] = rng.standard_normal((B * side * side, 3 * 2 * 14 * 14)).astype(np.float32)
        batch["image_grid_thw"] = np.asarray([(1, side, side)] * B, np.int32)
    rt = dict(
        dtype=getattr(jnp, args.dtype),
        param_dtype=getattr(jnp, args.param_dtype),
        remat=args.remat,
        remat_policy=args.remat_policy,
        logits_chunk=args.logits_chunk,
        vision_block=side * side,
        vision_chunk=args.vision_chunk,
        scan_layers=args.scan_layers,
        scan_vision=args.scan_vision,
    )
    gcfg = steps.GRPOConfig(num_micro_batches=args.micro_batches)
    make = lambda: steps.TrainState(
        models.from_config(cfg.to_dict(), rngs=nnx.Rngs(0), **rt),  # noqa: E731
        optax.adamw(1e-6),
        frozen_vision=args.frozen_vision,
    )
    abstract = nnx.eval_shape(make)
    if args.split_images and n_img:  # each micro-batch's tower over its own images (as the trainers pass them)
        from grlhfv_jax.trainers import loop

        batch = loop.micro_batch_images(abstract.model, batch, args.micro_batches)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract.model, nnx.Param)))
    dev = jax.devices()[0]
    out = dict(
        rows=B,
        tokens=T,
        new_tokens=R,
        image_tokens=n_img,
        params=params,
        micro_batches=args.micro_batches,
        dtype=args.dtype,
        param_dtype=args.param_dtype,
        remat=args.remat,
        remat_policy=args.remat_policy if args.remat else None,
        logits_chunk=args.logits_chunk,
        vision_chunk=args.vision_chunk,
        scan_layers=args.scan_layers,
        scan_vision=args.scan_vision,
        split_images=args.split_images,
        frozen_vision=args.frozen_vision,
        vocab=args.vocab,
        layers=args.layers,
        platform=dev.platform,
        device_kind=dev.device_kind,
        jax=jax.__version__,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )
    t0 = time.perf_counter()
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    compiled = steps.grpo_step.lower(abstract, spec, gcfg, window=R).compile()
    out["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    out["temp_bytes"] = int(mem.temp_size_in_bytes)
    out["argument_bytes"] = int(mem.argument_size_in_bytes)
    _log(
        f"[train] compiled in {out['compile_s']:.1f} s: temp {out['temp_bytes'] / 1e9:.3f} GB, arguments "
        f"{out['argument_bytes'] / 1e9:.3f} GB"
    )
    if args.memory_only:
        return out
    state = make()
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    steps.grpo_step(state, jb, gcfg, window=R)[1]["loss"].block_until_ready()  # compile (cached) + one step
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _, met = steps.grpo_step(state, jb, gcfg, window=R)
        jax.block_until_ready(met["loss"])
        times.append(time.perf_counter() - t0)
    out["step_s"] = min(times)
    out["tokens_per_s"] = B * T / out["step_s"]
    peak = next(
        (v for k, v in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])) if dev.device_kind.startswith(k)), None
    )
    out["mfu"] = None if peak is None else 6 * params * B * T / out["step_s"] / peak
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    out["peak_bytes_in_use"] = None if not stats else stats.get("peak_bytes_in_use")
    _log(f"[train] {out['step_s']:.3f} s per step, {out['tokens_per_s']:.0f} tokens/s, MFU {out['mfu']}")
    return out


def _add_2b_shape(p):
    """Model-shape options, Qwen2-VL-2B's by default (`train_hf_config`)."""
    for name, value in (
        ("vocab", 151936),
        ("hidden", 1536),
        ("intermediate", 8960),
        ("layers", 28),
        ("heads", 12),
        ("kv-heads", 2),
        ("vision-layers", 32),
        ("vision-hidden", 1280),
        ("vision-heads", 16),
    ):
        p.add_argument(f"--{name}", type=int, default=value)


def _add_train(sub):
    p = sub.add_parser("train", help="GRPO update: memory, compile time, step time, MFU (2B-shaped by default)")
    p.add_argument("--tiny", action="store_true", help="a tiny model and batch (CPU): sizes not given are small")
    p.add_argument("--memory-only", action="store_true", help="compile from shapes only: memory and compile time")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--tokens", type=int, default=1024, help="tokens per row (image + text + response)")
    p.add_argument("--new-tokens", type=int, default=256, help="response tokens per row (the loss's window)")
    p.add_argument("--image-size", type=int, default=448, help="square image side in pixels (0: text only)")
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--remat", action="store_true", help="rematerialise each decoder / vision block")
    p.add_argument("--remat-policy", default="nothing", help="with --remat: nothing, dots, dots_all")
    p.add_argument("--logits-chunk", type=int, default=0, help="LM-head columns per piece (0: all at once)")
    p.add_argument("--frozen-vision", action="store_true")
    p.add_argument(
        "--scan-layers",
        action="store_true",
        help="decoder layers stacked and run by a scan (compile one layer, not --layers)",
    )
    p.add_argument(
        "--scan-vision",
        action="store_true",
        help="vision blocks stacked and run by a scan (compile one block, not --vision-layers)",
    )
    p.add_argument(
        "--vision-chunk",
        type=int,
        default=0,
        help="query patches per vision attention piece, whole images here (0: all at once)",
    )
    p.add_argument(
        "--split-images",
        action="store_true",
        help="the images split by micro-batch (trainers.loop.micro_batch_images): each micro-batch's "
        "tower over its own images, as the trainers run it (default: all at once)",
    )
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--tied", action="store_true", help="tie the LM head to the embedding (Qwen2-VL-2B: tied)")
    _add_2b_shape(p)
    p.add_argument("--repeats", type=int, default=3)
    return p


# ------------------------------------------------------------------------------------ judge

TINY_JUDGE = dict(
    prompts=2,
    question_tokens=8,
    answer_tokens=6,
    new_tokens=8,
    image_size=56,
    vocab=512,
    hidden=64,
    intermediate=128,
    layers=2,
    heads=4,
    kv_heads=2,
    vision_layers=1,
    vision_hidden=32,
    vision_heads=2,
    repeats=1,
)


def bench_judge(args) -> dict:
    """For n in `--ns`: the n(n-1) ordered pairs of n answers to each of `--prompts` prompts (an
    image + `--question-tokens` text), judged greedily (`--new-tokens` each) by the shared-prefix
    judge (`rollout.judge.judge_generate`: each prompt's image and question prefilled once) and by
    `engine.generate` on every pair's full prompt: seconds per call (best of `--repeats` after a
    compile), pairs/s, and whether the two give the same tokens (and the largest log-prob gap)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from grlhfv_jax import models
    from grlhfv_jax.rollout import engine, judge

    if args.tiny:  # the tiny sizes, except those given on the command line
        defaults = vars(_add_judge(argparse.ArgumentParser().add_subparsers()).parse_args([]))
        for k, v in TINY_JUDGE.items():
            if getattr(args, k) == defaults[k]:
                setattr(args, k, v)
    cfg = train_hf_config(argparse.Namespace(**vars(args), tied=True))
    model = models.from_config(cfg.to_dict(), rngs=nnx.Rngs(0), dtype=getattr(jnp, args.dtype))
    split = nnx.split(model)
    rng = np.random.default_rng(0)
    side = args.image_size // 14
    side -= side % 2
    n_img = side * side // 4
    P = args.prompts
    prefixes = [
        [cfg.vision_start_token_id]
        + [cfg.image_token_id] * n_img
        + [cfg.vision_end_token_id]
        + rng.integers(3, args.vocab - 8, args.question_tokens).tolist()
        for _ in range(P)
    ]
    pixels = [rng.standard_normal((side * side, 3 * 2 * 14 * 14)).astype(np.float32) for _ in range(P)]
    sep, tail = rng.integers(3, args.vocab - 8, 3).tolist(), rng.integers(3, args.vocab - 8, 5).tolist()

    def left_padded(rows, images):
        T = max(len(r) for r in rows)
        ids, mask = np.zeros((len(rows), T), np.int32), np.zeros((len(rows), T), np.int32)
        for b, r in enumerate(rows):
            ids[b, T - len(r) :], mask[b, T - len(r) :] = r, 1
        return dict(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=np.concatenate(images),
            image_grid_thw=np.asarray([(1, side, side)] * len(images), np.int32),
        )

    def best(fn):
        jax.block_until_ready(fn().tokens)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            jax.block_until_ready(out.tokens)
            times.append(time.perf_counter() - t0)
        return min(times), out

    dev = jax.devices()[0]
    out = dict(
        prompts=P,
        image_tokens=n_img,
        new_tokens=args.new_tokens,
        platform=dev.platform,
        device_kind=dev.device_kind,
        dtype=args.dtype,
        layers=args.layers,
        vocab=args.vocab,
    )
    for n in args.ns:
        answers = [[rng.integers(3, args.vocab - 8, args.answer_tokens).tolist() for _ in range(n)] for _ in range(P)]
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        suffixes = [[a[i] + sep + a[j] + tail for i, j in pairs] for a in answers]
        kw = dict(max_new_tokens=args.new_tokens, temperature=0.0, model_split=split)
        shared_s, shared = best(lambda: judge.judge_generate(model, left_padded(prefixes, pixels), suffixes, **kw))
        full = left_padded(
            [prefixes[p] + s for p in range(P) for s in suffixes[p]], [pixels[p] for p in range(P) for _ in pairs]
        )
        sep_s, alone = best(lambda: engine.generate(model, full, **kw))
        rows = P * len(pairs)
        out[f"n{n}"] = dict(
            pairs=rows,
            shared_s=shared_s,
            separate_s=sep_s,
            speedup=sep_s / shared_s,
            shared_pairs_per_s=rows / shared_s,
            separate_pairs_per_s=rows / sep_s,
            same_tokens=bool(np.array_equal(np.asarray(shared.tokens), np.asarray(alone.tokens))),
            max_logprob_diff=float(np.max(np.abs(np.asarray(shared.logprobs) - np.asarray(alone.logprobs)))),
        )
        _log(f"[judge] n={n}: {rows} pairs, shared {shared_s:.3f} s, separate {sep_s:.3f} s")
    return out


def _add_judge(sub):
    p = sub.add_parser("judge", help="shared-prefix GRM judging vs each pair's full prompt, n in --ns")
    p.add_argument("--tiny", action="store_true", help="a tiny model (CPU): sizes not given are small")
    p.add_argument("--ns", type=int, nargs="+", default=[3, 5, 7], help="answers per prompt")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--question-tokens", type=int, default=64)
    p.add_argument("--answer-tokens", type=int, default=128, help="tokens per answer")
    p.add_argument("--new-tokens", type=int, default=256, help="judgment tokens (greedy, no EOS)")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    _add_2b_shape(p)
    p.add_argument("--repeats", type=int, default=3)
    return p


SUBCOMMANDS = {
    "rollout": (_add_rollout, bench_rollout),
    "vision": (_add_vision, bench_vision),
    "grpo": (_add_grpo, bench_grpo),
    "train": (_add_train, bench_train),
    "judge": (_add_judge, bench_judge),
}


# XLA:CPU's default scheduler runs independent work concurrently and so hoists a rematerialised
# block's recomputation out of the backward pass: remat then saves nothing (measured: 16 layers,
# 1.77 GB temp with remat vs 0.34 GB with this flag). Set for `train` before jax starts, so that its
# CPU memory figures are those of the schedule an accelerator's memory-aware scheduler picks.
CPU_MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m grlhfv_jax.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    if getattr(args, "devices", 1) > 1 and "jax" not in sys.modules:  # fake CPU devices (no effect on a GPU / TPU)
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
        ).strip()
    if args.cmd == "train" and "jax" not in sys.modules and CPU_MEMORY_SCHEDULER not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + CPU_MEMORY_SCHEDULER).strip()
    res = SUBCOMMANDS[args.cmd][1](args)
    print(json.dumps(res, sort_keys=True))
    return res


if __name__ == "__main__":
    main()
