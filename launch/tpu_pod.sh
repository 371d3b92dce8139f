#!/usr/bin/env bash
# A Cloud TPU pod slice (several TPU VM workers, one JAX process each) or, as tpu_vm.sh, one TPU VM:
# create it, install one commit of this repository on every worker, run the same command on all
# workers with the workdir in a bucket, stream worker 0's log, delete it.
#
#   launch/tpu_pod.sh [--dry-run] COMMAND --name NAME --zone ZONE [options] [-- MAIN_FLAGS...]
#
# Commands:
#   create   gcloud compute tpus tpu-vm create (with --queued: a queued resource, waited on until
#            ACTIVE)
#   install  a `git archive` of --commit copied to every worker (--worker=all), unpacked into
#            ~/grlhfv_jax with a venv and `pip install -e '.[gcs]' jax[tpu]` (--repo-url URL: git clone and
#            check out the commit there instead)
#   run      on every worker, in the background: launch/worker_run.sh, which exports
#            JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID from the TPU VM's
#            metadata and runs `python -m grlhfv_jax.main --config CONFIG --workdir gs://...
#            MAIN_FLAGS`; log in ~/grlhfv_jax/run.log, copied to WORKDIR/logs/ at the end
#   logs     stream worker 0's log (tail -F; Ctrl-C stops the stream, not the run)
#   stop     SIGTERM to the run on every worker: each saves a checkpoint at the next step boundary
#            and exits (`run` again resumes)
#   delete   tear the slice down (--queued: the queued resource and its node)
#   up       create, install, run, logs
#   all      create, install, run, logs, delete (the run's end is waited for, then the slice deleted)
#
# Options:
#   --name NAME              the TPU (and queued resource) name (required)
#   --zone ZONE              e.g. us-east5-a (required)
#   --project PROJECT        gcloud's --project (default: gcloud's configured project)
#   --accelerator-type TYPE  default v5p-64 (tpu_vm.sh: v6e-8)
#   --version VERSION        TPU runtime (software) version; default from TYPE: v2-alpha-tpuv5 (v5p),
#                            v2-alpha-tpuv5-lite (v5litepod), v2-alpha-tpuv6e (v6e),
#                            tpu-ubuntu2204-base (v4)
#   --spot                   Spot VMs (preemptible; rerun `up` after a preemption: it resumes)
#   --queued                 create / delete through queued resources
#   --commit REF             what to install (default HEAD); committed files only
#   --repo-url URL           install by git clone URL (the commit must be pushed there)
#   --jax SPEC               the jax requirement installed beside the package (default jax[tpu])
#   --config PATH[:ARG]      config file for run (e.g. configs/paper/grm_qwen25vl_7b.py:pod)
#   --workdir gs://B/P       the run's workdir (required for run: all workers share it)
#   --dry-run                print the commands, one a line, shell-quoted; run nothing
#   MAIN_FLAGS               after --: more flags for main.py (--config.a.b=v, --dry_run, --restart)
#
# The former usage, `tpu_pod.sh TPU_NAME ZONE CONFIG gs://B/WORKDIR [MAIN_FLAGS...]`, still works:
# it is `run` with those values (the package must be installed on the workers, `install` does it).
set -euo pipefail
PROG=${GRLHFV_LAUNCH_PROG:-tpu_pod.sh}
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//; s/tpu_pod\.sh \[--dry-run\]/'"$PROG"' [--dry-run]/'
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="" name="" zone="" project="" accelerator_type=${GRLHFV_TPU_DEFAULT_TYPE:-v5p-64} version="" spot=0 queued=0
commit=HEAD repo_url="" jax="jax[tpu]" config="" workdir=""
MAIN_FLAG_WORDS='^(--config\..*|--dry_run|--restart|--describe.*)$'   # the old usage's trailing flags
parse_args " --name --zone --project --accelerator-type --version --commit --repo-url --jax --config --workdir " " --spot --queued " "$@"

commands=" create install run logs stop delete up all "
if [[ ${#positional[@]} -eq 0 ]]; then
  usage_error "no command given (one of:${commands% })"
elif [[ $commands == *" ${positional[0]} "* ]]; then
  cmd=${positional[0]}
  [[ ${#positional[@]} -eq 1 ]] || usage_error "unexpected argument '${positional[1]}' (main.py's flags go after --)"
elif [[ ${#positional[@]} -eq 4 ]]; then   # the old usage: TPU_NAME ZONE CONFIG WORKDIR
  cmd=run name=${positional[0]} zone=${positional[1]} config=${positional[2]} workdir=${positional[3]}
else
  usage_error "unknown command '${positional[0]}' (one of:${commands% })"
fi

[[ -n $name ]] || usage_error "--name is required"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || usage_error "--name '$name': lowercase letters, digits and '-'"
[[ -n $zone ]] || usage_error "--zone is required"
if [[ $cmd == run || $cmd == up || $cmd == all ]]; then
  require_config "$cmd" "$config" "$workdir"
  require_gs --workdir "$workdir"
fi
if [[ -z $version ]]; then
  case $accelerator_type in
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*) version=v2-alpha-tpuv5-lite ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    v4-*) version=tpu-ubuntu2204-base ;;
    *) usage_error "--accelerator-type $accelerator_type: give its runtime with --version" ;;
  esac
fi
full_commit=""
if [[ $cmd == install || $cmd == up || $cmd == all ]]; then
  full_commit=$(resolve_commit "$commit")
fi

gc=(gcloud compute tpus)
scope=(--zone="$zone")
[[ -n $project ]] && scope+=(--project="$project")
ssh_all=("${gc[@]}" tpu-vm ssh "$name" "${scope[@]}" --worker=all)
DIR=grlhfv_jax   # on every worker, in the home folder (the former tpu_pod.sh's place too)

do_create() {
  local extra=()
  [[ $spot == 1 ]] && extra+=(--spot)
  if [[ $queued == 1 ]]; then
    run "${gc[@]}" queued-resources create "$name" --node-id="$name" "${scope[@]}" \
      --accelerator-type="$accelerator_type" --runtime-version="$version" "${extra[@]}"
    note "then, every 30 s until the state is ACTIVE (FAILED / SUSPENDED: stop):"
    local describe=("${gc[@]}" queued-resources describe "$name" "${scope[@]}" --format='value(state.state)')
    if [[ $DRY_RUN == 1 ]]; then
      show "${describe[@]}"
    else
      local state=""
      while [[ $state != ACTIVE ]]; do
        state=$("${describe[@]}")
        note "queued resource $name: $state"
        case $state in FAILED|SUSPENDED) echo "$PROG: queued resource $name is $state" >&2; exit 1 ;; esac
        [[ $state == ACTIVE ]] || sleep 30
      done
    fi
  else
    run "${gc[@]}" tpu-vm create "$name" "${scope[@]}" --accelerator-type="$accelerator_type" --version="$version" "${extra[@]}"
  fi
}

do_install() {
  note "installing commit $full_commit on every worker of $name"
  if [[ -n $repo_url ]]; then
    run "${ssh_all[@]}" --command="$(install_script "$full_commit" "$jax" "$DIR" git "$repo_url")"
  else
    local tarball=grlhfv_jax-$full_commit.tar.gz
    archive_commit "$full_commit" "${TMPDIR:-/tmp}/$tarball"
    run "${gc[@]}" tpu-vm scp "${TMPDIR:-/tmp}/$tarball" "$name:$tarball" "${scope[@]}" --worker=all
    run "${ssh_all[@]}" --command="$(install_script "$full_commit" "$jax" "$DIR" archive "$tarball")"
  fi
}

do_run() {
  run "${ssh_all[@]}" --command="$(worker_command "$DIR" "$config" "$workdir" "${main_flags[@]}")"
}

do_logs() {   # WAIT: 1 = until the run on worker 0 ends; 0 = until Ctrl-C
  run "${gc[@]}" tpu-vm ssh "$name" "${scope[@]}" --worker=0 --command="$(follow_command "$DIR" "$1")"
}

do_stop() {
  run "${ssh_all[@]}" --command="$(stop_command "$DIR")"
}

do_delete() {
  if [[ $queued == 1 ]]; then
    run "${gc[@]}" queued-resources delete "$name" "${scope[@]}" --force --quiet
  else
    run "${gc[@]}" tpu-vm delete "$name" "${scope[@]}" --quiet
  fi
}

case $cmd in
  create) do_create ;;
  install) do_install ;;
  run) do_run ;;
  logs) do_logs 0 ;;
  stop) do_stop ;;
  delete) do_delete ;;
  up) do_create; do_install; do_run; do_logs 0 ;;
  all) do_create; do_install; do_run; do_logs 1; do_delete ;;
esac
