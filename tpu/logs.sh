#!/usr/bin/env bash
# Follow a run's log on one worker until it ends.
set -euo pipefail
PROG=logs.sh
USAGE="Usage: tpu/logs.sh --name NAME --zone ZONE [--run RUN] [--worker N]

Prints the log of a run started by tpu/train.sh and follows it until the run ends, then
exits with the run's exit code. Worker 0 runs process 0, which prints progress and
metrics; other workers' logs say why they stopped if they failed first.

Options:
  --name NAME         the slice
  --zone ZONE         its zone
  --run RUN           run name (default jaxlm-run)
  --worker N          which worker (default 0)
  --project PROJECT   default: gcloud's configured project
  -h, --help          this text

Exit codes: the run's (0 done, 2 bad config or data, 3 stopped), 1 if it ended without one,
2 bad flags."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

opt_name='' opt_zone='' opt_project='' opt_run=jaxlm-run opt_worker=0
parse_flags "name zone project run worker" "$@"
require name zone
[[ $opt_worker =~ ^[0-9]+$ ]] || die "--worker must be a worker number, got '$opt_worker'"

worker_script "$opt_worker" logs --run "$opt_run"
