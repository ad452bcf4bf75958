#!/usr/bin/env bash
# From nothing to a trained model copied back: create, set up, train, fetch, delete.
set -euo pipefail
PROG=run.sh
USAGE="Usage: tpu/run.sh --name NAME --zone ZONE --accelerator-type TYPE [options] [-- key=value ...]

Runs tpu/create.sh, setup.sh, train.sh (following worker 0's log), fetch.sh and delete.sh
in turn. Once the slice exists it is deleted when this script ends for any reason (done,
failed, Ctrl-C), after the outputs are fetched, unless --keep is given.

Options:
  --name NAME               slice name
  --zone ZONE               e.g. us-west4-a (v5e), us-central2-b (v4)
  --accelerator-type TYPE   e.g. v5litepod-8 (one host), v4-32 (4 hosts)
  --version VERSION         TPU software version (default from the type, see create.sh)
  --spot | --preemptible    cheaper capacity that can be reclaimed
  --scopes SCOPES           service account scopes of the workers (see create.sh)
  --config FILE             YAML preset for the run
  --data DIR                data folder copied to every worker (see train.sh)
  --run RUN                 run name (default jaxlm-run)
  --to DIR                  where the outputs land (default runs/tpu/RUN)
  --no-checkpoints          do not copy the checkpoints back
  --python PY               Python on the workers (default python3.11)
  --keep                    keep the slice at the end (tpu/delete.sh deletes it later)
  --project PROJECT         default: gcloud's configured project
  -h, --help                this text

Exit codes: the run's (0 done, 2 bad config or data, 3 stopped), 2 bad flags, otherwise the
failing step's code."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

opt_name='' opt_zone='' opt_project='' opt_accelerator_type='' opt_version='' opt_spot='' opt_preemptible='' opt_scopes=''
opt_config='' opt_data='' opt_run=jaxlm-run opt_to='' opt_no_checkpoints='' opt_python='' opt_keep=''
parse_flags "name zone project accelerator-type version spot? preemptible? scopes config data run to
  no-checkpoints? python keep?" "$@"
require name zone accelerator-type

slice=(--name "$opt_name" --zone "$opt_zone" ${opt_project:+--project "$opt_project"})
create=("${slice[@]}" --accelerator-type "$opt_accelerator_type" ${opt_version:+--version "$opt_version"})
[[ -z $opt_spot ]] || create+=(--spot)
[[ -z $opt_preemptible ]] || create+=(--preemptible)
[[ -z $opt_scopes ]] || create+=(--scopes "$opt_scopes")
train=("${slice[@]}" --run "$opt_run" ${opt_config:+--config "$opt_config"} ${opt_data:+--data "$opt_data"})
fetch=("${slice[@]}" --run "$opt_run" ${opt_to:+--to "$opt_to"})
[[ -z $opt_no_checkpoints ]] || fetch+=(--no-checkpoints)

"$TPU_DIR/create.sh" "${create[@]}"
# shellcheck disable=SC2329  # called by the EXIT trap
finish() {
  if [[ -n $opt_keep ]]; then
    say "slice $opt_name kept; delete it with: tpu/delete.sh ${slice[*]}"
  else
    "$TPU_DIR/delete.sh" "${slice[@]}" --yes
  fi
}
trap finish EXIT

"$TPU_DIR/setup.sh" "${slice[@]}" ${opt_python:+--python "$opt_python"}
code=0
"$TPU_DIR/train.sh" "${train[@]}" -- ${REST[@]+"${REST[@]}"} || code=$?
"$TPU_DIR/fetch.sh" "${fetch[@]}" || say "could not copy the outputs back (exit code $?)"
exit "$code"
