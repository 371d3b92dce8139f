#!/usr/bin/env bash
# One GPU host, this machine or one reached by ssh: install one commit of this repository with
# jax[cuda12] in a venv, run the stages in the background, stream the log, stop the run.
#
#   launch/gpu_host.sh [--dry-run] COMMAND [--host USER@HOST] [options] [-- MAIN_FLAGS...]
#
# Commands:
#   install  a `git archive` of --commit unpacked into DIR with a venv and `pip install -e .
#            jax[cuda12]` (--repo-url URL: git clone and check out the commit instead); with
#            --host the archive is copied there by scp first
#   run      in the background: launch/worker_run.sh -> `python -m grlhfv_jax.main --config CONFIG
#            --workdir WORKDIR MAIN_FLAGS` (one process: the mesh spans the host's GPUs); log in
#            DIR/run.log (copied to WORKDIR/logs/ at the end when WORKDIR is gs://)
#   logs     stream the log (Ctrl-C stops the stream, not the run)
#   stop     SIGTERM to the run: it saves a checkpoint at the next step boundary and exits
#            (`run` again resumes)
#   up       install, run, logs
#
# Options:
#   --host USER@HOST   run there through ssh / scp (default: this machine, through bash -c)
#   --dir DIR          where the commit is installed, relative to the home folder unless absolute
#                      (default grlhfv_jax_run; a git checkout there is never replaced)
#   --commit REF       what to install (default HEAD); committed files only
#   --repo-url URL     install by git clone URL (the commit must be pushed there)
#   --jax SPEC         the jax requirement installed beside the package (default jax[cuda12])
#   --config PATH[:ARG]  config file for run (e.g. configs/paper/grm_qwen25vl_7b.py:1gpu)
#   --workdir DIR      the run's workdir: a gs:// path or a folder (relative: inside DIR)
#   --dry-run          print the commands, one a line, shell-quoted; run nothing
#   MAIN_FLAGS         after --: more flags for main.py (--config.a.b=v, --dry_run, --restart)
set -euo pipefail
PROG=gpu_host.sh
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

host="" dir=grlhfv_jax_run commit=HEAD repo_url="" jax="jax[cuda12]" config="" workdir=""
parse_args " --host --dir --commit --repo-url --jax --config --workdir " "" "$@"

commands=" install run logs stop up "
cmd=$(command_from "$commands" "${positional[@]}")
[[ $dir != "" && $dir != "." && $dir != "/" && $dir != *~* ]] || usage_error "--dir '$dir': give a folder of its own"
if [[ -n $host && ! $host =~ ^[A-Za-z0-9_.@-]+$ ]]; then usage_error "--host '$host': expected USER@HOST or HOST"; fi
if [[ $cmd == run || $cmd == up ]]; then
  require_config "$cmd" "$config" "$workdir"
fi
full_commit=""
if [[ $cmd == install || $cmd == up ]]; then
  full_commit=$(resolve_commit "$commit")
fi

on_host() {  # SCRIPT: run one command line on the host
  if [[ -n $host ]]; then run ssh "$host" "$1"; else run bash -c "$1"; fi
}

do_install() {
  note "installing commit $full_commit into $dir on ${host:-this machine}"
  if [[ -n $repo_url ]]; then
    on_host "$(install_script "$full_commit" "$jax" "$dir" git "$repo_url")"
    return
  fi
  local tarball=grlhfv_jax-$full_commit.tar.gz local_tar
  local_tar=${TMPDIR:-/tmp}/$tarball
  archive_commit "$full_commit" "$local_tar"
  if [[ -n $host ]]; then
    run scp "$local_tar" "$host:$tarball"
    on_host "$(install_script "$full_commit" "$jax" "$dir" archive "$tarball")"
  else
    on_host "$(install_script "$full_commit" "$jax" "$dir" archive "$local_tar")"
  fi
}

case $cmd in
  install) do_install ;;
  run) on_host "$(worker_command "$dir" "$config" "$workdir" "${main_flags[@]}")" ;;
  logs) on_host "$(follow_command "$dir" 0)" ;;
  stop) on_host "$(stop_command "$dir")" ;;
  up) do_install
      on_host "$(worker_command "$dir" "$config" "$workdir" "${main_flags[@]}")"
      on_host "$(follow_command "$dir" 0)" ;;
esac
