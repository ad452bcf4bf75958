#!/usr/bin/env bash
# Copy a run's outputs back from worker 0.
set -euo pipefail
PROG=fetch.sh
USAGE="Usage: tpu/fetch.sh --name NAME --zone ZONE [options]

Copies ~/jaxlm-runs/RUN from worker 0 (whose process 0 writes the outputs) into --to:
train.log, config.yaml and out/ (metrics.jsonl, loss_curve.png, samples, hf/, adapter/,
checkpoints/ unless --no-checkpoints; checkpoints under a gs:// checkpoint.dir stay there).

Options:
  --name NAME         the slice
  --zone ZONE         its zone
  --run RUN           run name (default jaxlm-run)
  --to DIR            local folder (default runs/tpu/RUN)
  --no-checkpoints    leave the checkpoints on the worker
  --project PROJECT   default: gcloud's configured project
  -h, --help          this text

Exit codes: 0 copied, 2 bad flags, otherwise the failing step's code."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

opt_name='' opt_zone='' opt_project='' opt_run=jaxlm-run opt_to='' opt_no_checkpoints=''
parse_flags "name zone project run to no-checkpoints?" "$@"
require name zone
to=${opt_to:-runs/tpu/$opt_run}

pack=(pack --run "$opt_run")
[[ -z $opt_no_checkpoints ]] || pack+=(--no-checkpoints)
worker_script 0 "${pack[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tpu_vm scp "$opt_name:$REMOTE_RUNS/$opt_run.tgz" "$work/" --worker=0
mkdir -p "$to"
tar -xzf "$work/$opt_run.tgz" -C "$to"
say "run $opt_run copied to $to"
