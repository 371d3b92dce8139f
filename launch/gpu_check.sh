#!/usr/bin/env bash
# shellcheck disable=SC2086  # $PY, $PARITY and the bench arguments are word lists on purpose
# Issue 14's GPU checks in one command, sized for one device lease (a 10-minute command; about
# 9.5 minutes in all): run from the repository root on a machine with one GPU (H100 / H200).
#
#   bash launch/gpu_check.sh            # writes into $OUT (default /tmp/gpu_check)
#   GPU_CHECK_TINY=1 bash launch/gpu_check.sh   # the same steps at tiny sizes: checks the script on a CPU
#
# Steps, each under its own time limit, each writing one file:
#   env.txt       jax / flax / transformers / torch versions, the devices
#   parity.txt    the transformers parity tests (models, sampler, precision) under the fp32 policy
#                 (tests/conftest.py sets highest matmul precision, as config.matmul_precision=auto
#                 does for a float32 run)
#   rollout.json  `bench rollout`, Qwen2-VL-2B-shaped, bf16, batch 64, a 448x448 image + 64 text tokens,
#                 256 new tokens: decode tokens/s, share of the HBM roofline, prefill, compile
#   train.json    `bench train`, 2B-shaped GRPO update, 32 rows x 1024 tokens, a 448x448 image per row,
#                 4 micro-batches, remat, LM head in chunks, images split by micro-batch: step time,
#                 MFU, peak memory, compile time
#   judge.json    `bench judge`, n in {3, 5, 7}: the shared-prefix judge against separate pairs
# Python packages the device image lacks (ml_collections, for test_precision and the stages; its
# needs absl-py and PyYAML are there): carry them as wheels in .whl (device README), e.g. here
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps -d .whl ml_collections==1.1.0
# and name .whl in the run's carry; they are installed into /tmp/site when the folder exists.
# Without it test_precision.py fails to collect and the other parity tests still run.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
start=$(date +%s)
note() { echo "[gpu_check $(( $(date +%s) - start )) s] $*" | tee -a "$OUT/log.txt"; }

$PY - > "$OUT/env.txt" 2>&1 <<'PY'
import importlib, jax
for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "transformers", "torch", "numpy"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # noqa: BLE001
        print(m, "missing:", e)
print("devices:", jax.devices())
PY
note "env: $(tail -1 "$OUT/env.txt")"

TWO_B="--vocab 151936 --hidden 1536 --intermediate 8960 --layers 28 --heads 12 --kv-heads 2 --vision-layers 32 --vision-hidden 1280 --vision-heads 16"
if [ -n "${GPU_CHECK_TINY:-}" ]; then   # a CPU check of this script: small shapes, few tests
  T_PARITY=300; T_BENCH=240
  PARITY="tests/test_precision.py"
  ROLLOUT="--batch 2 --image-size 56 --prompt-tokens 8 --new-tokens 4 --repeats 1 --skip-hf"
  TRAIN="--tiny --repeats 1"
  JUDGE="--tiny --ns 3 --repeats 1"
else
  T_PARITY=160; T_BENCH=110
  PARITY="tests/test_models_qwen2_vl.py tests/test_rollout_engine.py tests/test_precision.py"
  ROLLOUT="$TWO_B --batch 64 --image-size 448 --prompt-tokens 64 --new-tokens 256 --dtype bfloat16 --repeats 2 --skip-hf"
  TRAIN="--remat --tied --logits-chunk 256 --vision-chunk 1024 --split-images --repeats 3"
  JUDGE="--ns 3 5 7 --repeats 1"
fi

note "parity tests (limit ${T_PARITY} s)"
timeout "$T_PARITY" $PY -m pytest -q -p no:cacheprovider -o addopts="" --continue-on-collection-errors $PARITY > "$OUT/parity.txt" 2>&1
note "parity: rc $? $(grep -E 'passed|failed|error' "$OUT/parity.txt" | tail -1)"

bench() {   # name, limit, args...
  local name=$1 limit=$2; shift 2
  note "bench $name (limit ${limit} s)"
  timeout "$limit" $PY -m grlhfv_jax.bench "$name" "$@" > "$OUT/$name.json" 2>> "$OUT/log.txt"
  note "$name: rc $? $(head -c 400 "$OUT/$name.json")"
}
bench rollout "$T_BENCH" $ROLLOUT
bench train $(( T_BENCH + 60 )) $TRAIN
bench judge "$T_BENCH" $JUDGE
note "done"
