#!/usr/bin/env bash
# Run one config on every host of a Cloud TPU pod slice (multi-host JAX: one process per host).
#   launch/tpu_pod.sh TPU_NAME ZONE configs/X.py gs://bucket/workdir [--config.a.b=v ...]
# Each host runs the same command; grlhfv_jax.sharding.initialize_distributed() starts
# jax.distributed from the TPU environment, every process reads its own share of the data
# (grain, by jax.process_index()), and the mesh in the config spans all chips.
# The repository must already be cloned and installed on every host (pip install -e .),
# and checkpoints must be on storage all hosts see (the workdir).
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd grlhfv_jax && . .venv/bin/activate && python -m grlhfv_jax.main --config $config --workdir $workdir $*"
