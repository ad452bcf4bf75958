#!/usr/bin/env bash
# Start the same training on every worker of a slice and follow its log.
set -euo pipefail
PROG=train.sh
USAGE="Usage: tpu/train.sh --name NAME --zone ZONE [options] [-- key=value ...]

Starts 'python -m jaxlm.train --distributed [--config FILE] key=value ...' on every worker
at once (JAX finds the other workers by itself on a TPU VM), in the background, then follows
worker 0's log until the run ends (Ctrl-C stops following, not training: tpu/logs.sh
follows again). Outputs go to ~/jaxlm-runs/RUN/out on the workers (process 0 writes the
metrics, samples and the exported model; every worker writes its share of checkpoints).
Starting a run name again resumes it from its latest checkpoint.

Several hosts (e.g. v4-32) share checkpoints only through a common path: give
checkpoint.dir=gs://BUCKET/PATH as an override (see tpu/README.md).

Options:
  --name NAME         the slice
  --zone ZONE         its zone
  --run RUN           run name (default jaxlm-run)
  --config FILE       a YAML preset (copied to every worker)
  --data DIR          a data folder, copied to every worker as ~/jaxlm/<its name>: paths
                      in the config relative to the checkout then work there as here
  --detach            start and return without following the log
  --project PROJECT   default: gcloud's configured project
  -h, --help          this text

Exit codes: the run's exit code (0 done, 2 bad config or data, 3 stopped) unless --detach;
2 bad flags."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

opt_name='' opt_zone='' opt_project='' opt_run=jaxlm-run opt_config='' opt_data='' opt_detach=''
parse_flags "name zone project run config data detach?" "$@"
require name zone
[[ -z $opt_config || -f $opt_config ]] || die "--config $opt_config: no such file"
[[ -z $opt_data || -d $opt_data ]] || die "--data $opt_data: no such folder"

worker_script all prepare --run "$opt_run"
start=(start --run "$opt_run")
if [[ -n $opt_config ]]; then
  tpu_vm scp "$opt_config" "$opt_name:$REMOTE_RUNS/$opt_run/config.yaml" --worker=all
  start+=(--config "$REMOTE_RUNS/$opt_run/config.yaml")
fi
if [[ -n $opt_data ]]; then
  say "copying $opt_data to every worker"
  tpu_vm scp --recurse "${opt_data%/}" "$opt_name:$REMOTE_CHECKOUT/" --worker=all
fi
worker_script all "${start[@]}" -- ${REST[@]+"${REST[@]}"}
if [[ -n $opt_detach ]]; then
  say "started; follow with: tpu/logs.sh --name $opt_name --zone $opt_zone --run $opt_run"
  exit 0
fi
worker_script 0 logs --run "$opt_run"
