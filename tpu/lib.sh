# shellcheck shell=bash disable=SC2034,SC2154
# (SC2034/SC2154: the opt_* variables and PROG/USAGE are shared with the sourcing script.)
# Sourced by the tpu/*.sh scripts: flag parsing, messages, and the gcloud calls they share.
#
# A script sets PROG and USAGE, gives defaults as opt_<flag> variables, then calls
#   parse_flags "name zone accelerator-type spot?" "$@"   # '?' marks an on/off switch
#   require name zone
# Flag values land in opt_<flag> (dashes become underscores); words after `--` land in REST.

TPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$TPU_DIR")
REST=()

# Where things live on every worker, relative to the home directory (ssh starts there).
REMOTE_CHECKOUT=jaxlm
REMOTE_RUNS=jaxlm-runs

# Bad input: one line on stderr, exit 2 (the project's exit code for bad input or config).
die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 2
}

say() {
  printf '==> %s\n' "$*" >&2
}

parse_flags() {
  local spec=" ${1//[[:space:]]/ } " key value
  shift
  while (($#)); do
    case $1 in
      -h | --help)
        printf '%s\n' "$USAGE"
        exit 0
        ;;
      --)
        shift
        REST=("$@")
        return
        ;;
      --*=*)
        key=${1%%=*}
        key=${key#--}
        value=${1#*=}
        [[ $spec == *" $key "* ]] || die "unknown flag --$key (see --help)"
        ;;
      --*)
        key=${1#--}
        if [[ $spec == *" $key? "* ]]; then
          value=1
        elif [[ $spec == *" $key "* ]]; then
          (($# >= 2)) || die "--$key needs a value (see --help)"
          value=$2
          shift
        else
          die "unknown flag --$key (see --help)"
        fi
        ;;
      *) die "unexpected argument '$1': arguments are flags, e.g. --name my-tpu (see --help)" ;;
    esac
    printf -v "opt_${key//-/_}" '%s' "$value"
    shift
  done
}

# require FLAG...: exit 2 naming every required flag that was not given.
require() {
  local flag var missing=()
  for flag in "$@"; do
    var="opt_${flag//-/_}"
    [[ -n ${!var:-} ]] || missing+=("--$flag")
  done
  if ((${#missing[@]})); then
    local joined
    printf -v joined '%s, ' "${missing[@]}"
    die "missing ${joined%, } (see --help)"
  fi
}

# tpu_vm VERB ARGS...: `gcloud compute tpus tpu-vm VERB ARGS --zone=Z [--project=P]`.
tpu_vm() {
  local verb=$1
  shift
  gcloud compute tpus tpu-vm "$verb" "$@" --zone="$opt_zone" ${opt_project:+"--project=$opt_project"}
}

# on_workers WORKERS COMMAND ARGS...: run one command on the workers ("all", "0", "1-3"),
# each argument quoted for the remote shell, which starts in the home directory.
on_workers() {
  local workers=$1
  shift
  tpu_vm ssh "$opt_name" --worker="$workers" --command="$(quote "$@")"
}

# worker_script WORKERS SUBCOMMAND ARGS...: tpu/worker.sh of the copied checkout, on the workers.
worker_script() {
  local workers=$1
  shift
  on_workers "$workers" bash "$REMOTE_CHECKOUT/tpu/worker.sh" "$@"
}

quote() {
  local quoted
  printf -v quoted '%q ' "$@"
  printf '%s' "${quoted% }"
}
