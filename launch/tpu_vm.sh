#!/usr/bin/env bash
# One Cloud TPU VM (a single-host slice, e.g. v6e-8: 8 chips, one JAX process): the same commands
# and options as tpu_pod.sh, with v6e-8 as the default accelerator type.
#
#   launch/tpu_vm.sh [--dry-run] COMMAND --name NAME --zone ZONE [options] [-- MAIN_FLAGS...]
#
# COMMAND: create, install, run, logs, delete, up, all (`launch/tpu_vm.sh --help` lists the options).
# On one host worker_run.sh finds a single worker in the metadata and sets no jax.distributed
# variables; --worker=all is that one worker.
set -euo pipefail
export GRLHFV_LAUNCH_PROG=tpu_vm.sh GRLHFV_TPU_DEFAULT_TYPE=${GRLHFV_TPU_DEFAULT_TYPE:-v6e-8}
exec bash "$(dirname "${BASH_SOURCE[0]}")/tpu_pod.sh" "$@"
