"""Main-thread seconds per batch spent on images, with the image processor in the step (the old
path, config.data.image_workers = 0) and in the read threads (image_workers > 0).

    python -m grlhfv_jax.data.bench_images --images 16 --size 640x480 --workers 2 --steps 6

Writes `--images` JPEG images of noise into preference files in a temporary folder, converts them
(`files_source.write_splits`), trains a tiny tokenizer, and for each setting reads `--steps`
batches of `--images` records (`FilesSource.dataset`, `read_threads` = `--workers` either way, so
both decode ahead) and builds each record's example on the main thread as `encoding.Codec.example`
does (`processing.encode_example`; config.image's defaults: Qwen2-VL's processor). Prints one JSON object: per setting the
main-thread seconds per batch building the examples (`encode_s`), waiting for the read-ahead
(`wait_s`: the read threads not keeping up with a step that takes no time) and both (`main_s`),
medians over the steps after the first (which waits for the first read).

With ``--records N`` also the evaluations' path (`FilesSource.records`, then an example per
record): per setting (``records_serial``: no threads; ``records_threads``: ``--workers`` read
threads decoding) the seconds reading the first N records (``read_s``: the main thread decoding
them one by one, or waiting for the pool), building their examples (``encode_s``: the processor
runs here either way, `records` keeps no patches) and
both (``main_s``), medians of ``--steps`` repeats.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time

import numpy as np


def _files(root: str, n: int, h: int, w: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(buf, format="JPEG", quality=90)
        rows.append(
            dict(
                question=f"What is in image {k}?",
                image={"bytes": buf.getvalue(), "path": None},
                response_1="a red circle",
                response_2="two blue squares",
                overall_response=1 + k % 2,
            )
        )
    path = f"{root}/pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16, help="records (images) per batch")
    ap.add_argument("--size", default="640x480", help="image width x height")
    ap.add_argument("--workers", type=int, default=2, help="read threads (and image workers)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--records", type=int, default=0, help="> 0: also time FilesSource.records of that many")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    from grlhfv_jax import processing
    from grlhfv_jax.data import files_source as fs
    from grlhfv_jax.data.tokenizer import train_tokenizer

    out = {"images": args.images, "size": args.size, "workers": args.workers, "steps": args.steps}
    with tempfile.TemporaryDirectory() as root:
        pairs = _files(root, args.images * 2, h, w)
        dataset_dir, _ = fs.write_splits(f"{root}/tfds", {"grm_train": fs.SplitFiles(pairs)})
        train_tokenizer(["What is in image a red circle two blue squares"] * 20, f"{root}/tok", vocab_size=300)
        tok, proc = processing.load_tokenizer(f"{root}/tok"), processing.load_image_processor()

        def example(r):  # encoding.Codec.example
            text = processing.chat_prompt(r["question"], num_images=1, tokenizer=tok)
            return processing.encode_example(tok, proc, text, [r["image"]], r["answer"])

        for name, workers in (("in_step", 0), ("read_threads", args.workers)):
            src = fs.FilesSource(
                dataset_dir,
                shard=(0, 1),
                read_threads=args.workers,
                image_processor=processing.load_image_processor() if workers else None,
                image_workers=workers,
            )
            ds = src.dataset("grm_train", seed=0, batch_size=args.images)
            wait, enc, patches = [], [], 0
            for step in range(args.steps):
                t0 = time.perf_counter()
                recs = ds[step]
                t1 = time.perf_counter()
                ex = [example(r) for r in recs]
                t2 = time.perf_counter()
                wait.append(t1 - t0)
                enc.append(t2 - t1)
                patches = sum(e["pixel_values"].shape[0] for e in ex)
            wait, enc = wait[1:] or wait, enc[1:] or enc
            out[name] = {
                "encode_s": round(statistics.median(enc), 4),
                "wait_s": round(statistics.median(wait), 4),
                "main_s": round(statistics.median([a + b for a, b in zip(enc, wait)]), 4),
                "patches_per_batch": patches,
            }
            print(f"[bench_images] {name}: {out[name]}", file=sys.stderr, flush=True)
        if args.records > 0:
            for name, workers in (("records_serial", 0), ("records_threads", args.workers)):
                src = fs.FilesSource(
                    dataset_dir,
                    shard=(0, 1),
                    read_threads=workers,
                    image_processor=processing.load_image_processor() if workers else None,
                    image_workers=workers,
                )
                read, enc = [], []
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    recs = src.records("grm_train", args.records)
                    t1 = time.perf_counter()
                    [example(r) for r in recs]
                    read.append(t1 - t0)
                    enc.append(time.perf_counter() - t1)
                out[name] = {
                    "read_s": round(statistics.median(read), 4),
                    "encode_s": round(statistics.median(enc), 4),
                    "main_s": round(statistics.median([a + b for a, b in zip(read, enc)]), 4),
                    "records": len(recs),
                }
                print(f"[bench_images] {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
