# shellcheck shell=bash
# Shared by the launch scripts (sourced, not run): shell quoting, the --dry-run runner, the command line, usage
# errors, the commit to install and the per-host install script.
#
# A script sets PROG and defines usage() before sourcing this file. With DRY_RUN=1, `run` prints
# each command on one line, shell-quoted (the way Python's shlex.quote quotes), and runs nothing;
# otherwise it echoes the same line to stderr and runs it.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=${DRY_RUN:-0}
# The port jax.distributed's coordinator listens on (jax's own default on Cloud TPU); worker_run.sh
# and gke.sh use it.
# shellcheck disable=SC2034
COORDINATOR_PORT=8482

# q WORD: WORD quoted for a POSIX shell; safe words as they are.
q() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    local sq="'\"'\"'"
    printf "'%s'" "${s//\'/$sq}"
  fi
}

# show WORD...: one shell-quoted line.
show() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(q "$w")"; done
  printf '%s\n' "$out"
}

# run CMD ARG...: print it (dry run) or run it.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    show "$@"
  else
    printf '+ %s\n' "$(show "$@")" >&2
    "$@"
  fi
}

# note TEXT: a comment line (printed in the dry run as "# TEXT", to stderr otherwise).
note() {
  if [[ $DRY_RUN == 1 ]]; then printf '# %s\n' "$*"; else printf '[%s] %s\n' "$PROG" "$*" >&2; fi
}

usage_error() {
  printf '%s: error: %s\n' "$PROG" "$1" >&2
  printf 'Run "%s --help" for the usage.\n' "$PROG" >&2
  exit 2
}

# need_value OPTION "$#": an option that takes a value must have one.
need_value() {
  [[ $2 -ge 2 ]] || usage_error "$1 needs a value"
}

# resolve_commit REF: the full id of REF in this repository (a local git call, also in the dry run).
resolve_commit() {
  git -C "$REPO_ROOT" rev-parse --verify --quiet "$1^{commit}" \
    || usage_error "--commit $1: not a commit of $REPO_ROOT"
}

# parse_args VALUE_OPTIONS FLAG_OPTIONS ARG...: a launch script's command line into variables. Each
# option in VALUE_OPTIONS (" --a --b-c ", spaces around each) takes a value, stored in the variable
# of its name less the leading dashes, '-' as '_' (--b-c: b_c); each in FLAG_OPTIONS sets its
# variable to 1. --dry-run sets DRY_RUN=1, -h / --help prints the usage and exits; what follows --
# goes to main_flags, as does a word matching the regex MAIN_FLAG_WORDS where the script sets one;
# other words to positional.
parse_args() {
  local values=$1 flags=$2 var
  shift 2
  main_flags=() positional=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) usage; exit 0 ;;
      --) shift; main_flags+=("$@"); break ;;
      -*)
        var=${1#--} var=${var//-/_}
        if [[ $values == *" $1 "* ]]; then
          need_value "$1" "$#"; printf -v "$var" '%s' "$2"; shift 2
        elif [[ $flags == *" $1 "* ]]; then
          printf -v "$var" '%s' 1; shift
        elif [[ -n ${MAIN_FLAG_WORDS:-} && $1 =~ $MAIN_FLAG_WORDS ]]; then
          main_flags+=("$1"); shift
        else
          usage_error "unknown option '$1'"
        fi ;;
      *) positional+=("$1"); shift ;;
    esac
  done
}

# command_from COMMANDS WORD...: the one command word the script was given (WORD... = its positional
# arguments), from COMMANDS (" a b c ", spaces around each); a usage error otherwise.
command_from() {
  local commands=$1
  shift
  [[ $# -gt 0 ]] || usage_error "no command given (one of:${commands% })"
  [[ $commands == *" $1 "* ]] || usage_error "unknown command '$1' (one of:${commands% })"
  [[ $# -eq 1 ]] || usage_error "unexpected argument '$2' (main.py's flags go after --)"
  printf '%s' "$1"
}

# require_config CMD CONFIG WORKDIR: CMD needs --config (a file of this repository, PATH[:ARG]) and
# --workdir.
require_config() {
  [[ -n $2 ]] || usage_error "--config is required for $1"
  [[ -f $REPO_ROOT/${2%%:*} ]] || usage_error "--config $2: no file ${2%%:*} in $REPO_ROOT"
  [[ -n $3 ]] || usage_error "--workdir is required for $1"
}

require_gs() {  # OPTION VALUE
  [[ $2 == gs://?* ]] || usage_error "$1 must be a gs:// path that every host can read and write (got '${2}')"
}

# archive_commit COMMIT FILE: a tar.gz of COMMIT's tree under grlhfv_jax/ (what gets installed).
archive_commit() {
  run git -C "$REPO_ROOT" archive --format=tar.gz --prefix=grlhfv_jax/ -o "$2" "$1"
}

# install_script COMMIT JAX_SPEC DIR MODE SOURCE: the commands one host runs to install COMMIT into DIR
# (relative to the home folder unless absolute) with a venv: MODE "archive" unpacks SOURCE, a tar.gz
# made by archive_commit; MODE "git" clones SOURCE, a repository URL, and checks COMMIT out. A DIR
# that is a git checkout not made by this function is left alone (the install stops). One line,
# for `ssh --command`.
install_script() {
  local commit=$1 jax=$2 dir=$3 mode=$4 src=$5 get d
  d=$(q "$dir")
  if [[ $mode == git ]]; then
    get="git clone $(q "$src") $d && git -C $d checkout --detach $(q "$commit")"
  else
    get="mkdir -p $d && tar -xzf $(q "$src") -C $d --strip-components=1"
  fi
  printf '%s' "set -e; cd ~; if [ -d $d/.git ] && [ ! -f $d/COMMIT ]; then echo $(q "$dir is a git checkout: not replacing it") >&2; exit 1; fi"
  printf '%s' "; rm -rf $d && $get && cd $d && echo $(q "$commit") > COMMIT"
  printf '%s' " && { python3 -m venv .venv || { sudo apt-get update -q && sudo apt-get install -y -q python3-venv && python3 -m venv .venv; }; }"
  printf '%s' " && . .venv/bin/activate && pip install -q -U pip && pip install -q -e ".[gcs]" $(q "$jax")"
  printf '%s' " && python -c 'import jax; print(jax.__version__, jax.devices())'"
}

# worker_command DIR CONFIG WORKDIR FLAG...: what each host runs to start the stages in the
# background (launch/worker_run.sh: the jax.distributed environment, the log DIR/run.log, a copy of
# the log in a gs:// workdir at the end).
worker_command() {
  local dir=$1 config=$2 workdir=$3 cmd f
  shift 3
  cmd="cd ~ && cd $(q "$dir") && nohup bash launch/worker_run.sh --log run.log --"
  cmd+=" --config $(q "$config") --workdir $(q "$workdir")"
  for f in "$@"; do cmd+=" $(q "$f")"; done
  printf '%s' "$cmd > /dev/null 2>&1 < /dev/null &"
}

# follow_command DIR WAIT: stream DIR/run.log (WAIT=1: until the run there ends; else until Ctrl-C).
follow_command() {
  local log pid
  log=$(q "$1/run.log") pid=$(q "$1/run.log.pid")
  if [[ $2 == 1 ]]; then   # the wrapper's pid file appears once it has started
    printf '%s' "cd ~; for i in \$(seq 60); do [ -f $pid ] && break; sleep 2; done; tail -n +1 -F --pid=\$(cat $pid) $log"
  else
    printf '%s' "cd ~; tail -n +1 -F $log"
  fi
}

# stop_command DIR: SIGTERM to the run's python (it saves at the next step boundary and exits).
stop_command() {
  local pid
  pid=$(q "$1/run.log.python.pid")
  printf '%s' "cd ~; if [ -f $pid ]; then kill -TERM \$(cat $pid); else echo 'no run here'; fi"
}
