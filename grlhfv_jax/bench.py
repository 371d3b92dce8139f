"""Benchmarks. Each subcommand prints ONE JSON object on stdout (progress goes to stderr).

    python -m grlhfv_jax.bench rollout [--batch 16 --prompt-tokens 64 --image-size 224 --new-tokens 128 ...]

rollout: generated tokens/s of our sampler (grlhfv_jax.rollout.generate) and of transformers'
PyTorch `generate` (KV cache) on the same randomly initialised Qwen2-VL config and the same
weights (the torch model is saved and loaded into ours), same batch (an image + `prompt_tokens`
text tokens per row), same new-token count (no EOS: every row generates all tokens), same number
of CPU threads. Our compile time is excluded from our rate and reported separately. On a GPU /
TPU it also reports decode tokens/s and the fraction of the HBM-bandwidth roofline:
(bytes of the decoder's params + the KV cache read per step) / step time / peak bandwidth.

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
    "NVIDIA H100 80GB HBM3": 3.35e12,     # SXM
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


def rollout_hf_config(args):
    """A Qwen2-VL config of about 50M parameters at the defaults (text 8 x 512, vocab 32768 tied)."""
    import transformers

    text = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                max_position_embeddings=4096, rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 1e6})
    head_dim = args.hidden // args.heads
    if head_dim != 64:
        half = head_dim // 2
        t = half // 4
        text["rope_parameters"]["mrope_section"] = [t, (half - t) // 2, half - t - (half - t) // 2]
    vision = dict(depth=args.vision_layers, embed_dim=args.vision_hidden, hidden_size=args.hidden,
                  num_heads=args.vision_heads, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    return transformers.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=args.vocab - 4,
                                      video_token_id=args.vocab - 3, vision_start_token_id=args.vocab - 2,
                                      vision_end_token_id=args.vocab - 1, tie_word_embeddings=True)


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
        img = [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id] if args.image_size else []
        rows.append(img + text)
    T = max(len(r) for r in rows)
    ids = np.zeros((args.batch, T), np.int32)
    mask = np.zeros((args.batch, T), np.int32)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = r
        mask[b, T - len(r):] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == cfg.image_token_id).astype(np.int32)}
    if args.image_size:
        patch_dim = 3 * 2 * 14 * 14
        batch["pixel_values"] = rng.standard_normal((args.batch * side * side, patch_dim)).astype(np.float32)
        batch["image_grid_thw"] = np.asarray([grid] * args.batch, np.int64)
    return batch


def _time_hf(model, batch, args):
    import torch

    kw = {k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()
          if k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    if "pixel_values" in batch:
        kw["pixel_values"] = torch.as_tensor(batch["pixel_values"]).to(next(model.parameters()).dtype)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0,
               use_cache=True)
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
        cache, logits, deltas, first_slot = engine.prefill(split, batch, cache_len_extra=buf,
                                                           merge_size=model.config.spatial_merge_size)
        jax.block_until_ready((cache, logits))
        t1 = time.perf_counter()
        out = engine.decode(split, cache, logits, deltas, first_slot=first_slot, max_new_tokens=args.new_tokens,
                            buf_len=buf, temperature=args.temperature, top_p=1.0, top_k=0, eos_token_id=None,
                            rng=jax.random.key(i + 1))
        jax.block_until_ready(out)
        t2 = time.perf_counter()
        prefills.append(t1 - t0)
        decodes.append(t2 - t1)
        _log(f"ours #{i}: total {totals[-1]:.2f}s (prefill {prefills[-1]:.3f}s, decode {decodes[-1]:.2f}s)")
    assert int(out.lengths.min()) == args.new_tokens
    return dict(total=min(totals), first=first, prefill=min(prefills), decode=min(decodes),
                cache_bytes=sum(cache[k].size * cache[k].dtype.itemsize for k in ("k", "v")))


def bench_rollout(args) -> dict:
    import jax
    import jax.numpy as jnp

    from grlhfv_jax.models import load_pretrained

    threads = args.threads or cpu_threads()
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    cfg = rollout_hf_config(args)
    batch = rollout_batch(args, cfg)
    res = {"bench": "rollout", "device": device.device_kind, "platform": device.platform,
           "cpu_threads": threads, "batch": args.batch, "prompt_text_tokens": args.prompt_tokens,
           "image_size": args.image_size, "prompt_len": int(batch["input_ids"].shape[1]),
           "new_tokens": args.new_tokens, "temperature": args.temperature, "dtype": args.dtype,
           "load_avg_1min_start": os.getloadavg()[0]}

    try:
        import torch
    except ImportError:
        raise SystemExit("bench rollout times transformers' PyTorch generate beside ours and needs torch, "
                         "which the package does not install: pip install -e '.[test]' (pins a CPU build)") from None
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
        model = load_pretrained(d, dtype=getattr(jnp, args.dtype))
    if args.dtype == "bfloat16":  # the same dtype on both sides
        hf = hf.to(torch.bfloat16)

    ours = _time_ours(model, batch, args)
    n_tok = args.batch * args.new_tokens
    res.update(ours_tokens_per_s=n_tok / ours["total"], ours_seconds=ours["total"],
               ours_compile_s=max(ours["first"] - ours["total"], 0.0), ours_prefill_s=ours["prefill"],
               ours_decode_s=ours["decode"], ours_decode_tokens_per_s=args.batch * (args.new_tokens - 1) / ours["decode"],
               ours_step_ms=1e3 * ours["decode"] / max(args.new_tokens - 1, 1))
    if not on_cpu:
        itemsize = jnp.dtype(args.dtype).itemsize
        param_bytes = n_text * itemsize      # decoder + (tied) LM head; the vision tower is not read in decode
        step_bytes = param_bytes + ours["cache_bytes"]
        bw = args.peak_bandwidth or peak_bandwidth(device.device_kind)
        res.update(step_bytes=step_bytes, peak_bandwidth=bw,
                   roofline_fraction=(step_bytes / (ours["decode"] / max(args.new_tokens - 1, 1)) / bw) if bw else None)
    if not on_cpu and not args.hf_on_cpu:
        res["hf"] = "skipped: the torch build is CPU-only; pass --hf-on-cpu to time it anyway"
    elif not args.skip_hf:
        hf_t, hf_first = _time_hf(hf, batch, args)
        res.update(hf_tokens_per_s=n_tok / hf_t, hf_seconds=hf_t, hf_first_call_s=hf_first,
                   speedup=(n_tok / ours["total"]) / (n_tok / hf_t))
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
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype of both models (ours: weights and KV cache; transformers: .to(dtype))")
    p.add_argument("--repeats", type=int, default=3, help="timed calls of ours (best is reported)")
    p.add_argument("--hf-repeats", type=int, default=2, help="timed calls of transformers after a warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPUs XLA uses)")
    p.add_argument("--peak-bandwidth", type=float, default=0.0, help="bytes/s; default from the device kind")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--hf-on-cpu", action="store_true", help="on an accelerator, still time transformers (CPU)")
    return p


SUBCOMMANDS = {"rollout": (_add_rollout, bench_rollout)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m grlhfv_jax.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    res = SUBCOMMANDS[args.cmd][1](args)
    print(json.dumps(res, sort_keys=True))
    return res


if __name__ == "__main__":
    main()
