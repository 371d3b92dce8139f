#!/usr/bin/env bash
# Runs on each host (tpu_pod.sh / tpu_vm.sh / gpu_host.sh start it there): the stages,
# `python -m grlhfv_jax.main MAIN_FLAGS...`, with the environment jax.distributed needs.
#
#   bash launch/worker_run.sh [--dry-run] [--log FILE] -- MAIN_FLAGS...
#
# - On a Cloud TPU VM slice of more than one worker it reads the VM's metadata (agent-worker-number,
#   worker-network-endpoints: what jax's own Cloud TPU detection reads) and exports
#   JAX_COORDINATOR_ADDRESS (worker 0, port 8482), JAX_NUM_PROCESSES (the workers) and JAX_PROCESS_ID
#   (this worker), the variables grlhfv_jax.sharding.initialize_distributed reads. Variables that are
#   already set are kept; off a TPU VM (no metadata) nothing is set: one process.
# - Activates ./.venv (the install step made it) when there is one.
# - --log FILE: all output goes to FILE (appended); at the end FILE is copied to
#   WORKDIR/logs/worker-<process id>.log when --workdir is a gs:// path.
# - SIGTERM / SIGINT: python receives them itself (a preempted or stopping VM signals every
#   process; `stop` in the launch scripts signals python's pid, FILE.python.pid) and saves a
#   checkpoint at the next step boundary; this wrapper is not killed by them (it is not passed on:
#   python would see it twice), waits for python, copies the log and exits with python's status.
#   Rerunning the same command resumes.
# - --dry-run: print the environment and the command instead of running them.
set -euo pipefail
PROG=worker_run.sh
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --log) need_value "$1" "$#"; log=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage_error "unknown argument '$1' (main.py's flags go after --)" ;;
  esac
done
[[ $# -gt 0 ]] || usage_error "no main.py flags after -- (at least --config)"
workdir=""
prev=""
for a in "$@"; do
  case $a in --workdir=*) workdir=${a#--workdir=} ;; esac
  [[ $prev == --workdir ]] && workdir=$a
  prev=$a
done

metadata() {  # KEY: a TPU VM's metadata attribute (fails off GCE)
  curl -sf -m 5 -H 'Metadata-Flavor: Google' \
    "http://${GCE_METADATA_IP:-metadata.google.internal}/computeMetadata/v1/instance/attributes/$1"
}

if [[ -z ${JAX_COORDINATOR_ADDRESS:-} ]] && id=$(metadata agent-worker-number 2>/dev/null) \
   && endpoints=$(metadata worker-network-endpoints 2>/dev/null); then
  hosts=()
  IFS=, read -ra workers <<< "$endpoints"
  for w in "${workers[@]}"; do   # "host" or the older "name:id:ip"
    IFS=: read -ra parts <<< "$w"
    if [[ ${#parts[@]} -eq 3 ]]; then hosts+=("${parts[2]}"); else hosts+=("${parts[0]}"); fi
  done
  if [[ ${#hosts[@]} -gt 1 ]]; then
    export JAX_COORDINATOR_ADDRESS="${hosts[0]}:$COORDINATOR_PORT" JAX_NUM_PROCESSES=${#hosts[@]} JAX_PROCESS_ID=$id
  fi
fi

cd "$REPO_ROOT"
if [[ $DRY_RUN == 1 ]]; then
  for v in JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID; do
    [[ -n ${!v:-} ]] && show export "$v=${!v}"
  done
  [[ -f .venv/bin/activate ]] && show . .venv/bin/activate
  show python -m grlhfv_jax.main "$@"
  [[ -n $log && $workdir == gs://* ]] && show gcloud storage cp "$log" "$workdir/logs/worker-${JAX_PROCESS_ID:-0}.log"
  exit 0
fi

if [[ -n $log ]]; then
  pidfile="$log.pid"
  if [[ -f $pidfile ]] && ps -ww -p "$(cat "$pidfile")" -o args= 2>/dev/null | grep -q worker_run.sh; then
    echo "$PROG: a run is still going here (pid $(cat "$pidfile"), $pidfile); not starting another" >&2
    exit 1
  fi
  echo $$ > "$pidfile"
  exec >> "$log" 2>&1
fi
echo "[$PROG] $(date -u +%FT%TZ) $(hostname) commit $(cat COMMIT 2>/dev/null || echo ?)" \
  "JAX_COORDINATOR_ADDRESS=${JAX_COORDINATOR_ADDRESS:-} JAX_NUM_PROCESSES=${JAX_NUM_PROCESSES:-}" \
  "JAX_PROCESS_ID=${JAX_PROCESS_ID:-}"
if [[ -f .venv/bin/activate ]]; then
  # shellcheck source=/dev/null
  . .venv/bin/activate
fi
export PYTHONUNBUFFERED=1
python -m grlhfv_jax.main "$@" &
child=$!
[[ -n $log ]] && echo "$child" > "$log.python.pid"
signalled=0
trap 'signalled=1' TERM INT
rc=0
wait "$child" || rc=$?
while [[ $signalled == 1 ]]; do   # a signal ended the wait, not python: wait on for its status
  signalled=0 rc=0
  wait "$child" || rc=$?
done
echo "[$PROG] $(date -u +%FT%TZ) python exited with $rc"
if [[ -n $log && $workdir == gs://* ]]; then
  gcloud storage cp "$log" "$workdir/logs/worker-${JAX_PROCESS_ID:-0}.log" || true
fi
[[ -n $log ]] && rm -f "$log.pid" "$log.python.pid"
exit "$rc"
