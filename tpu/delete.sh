#!/usr/bin/env bash
# Delete a TPU VM slice (billing stops).
set -euo pipefail
PROG=delete.sh
USAGE="Usage: tpu/delete.sh --name NAME --zone ZONE [--yes]

Deletes the slice and everything on its disks (fetch the outputs first: tpu/fetch.sh).

Options:
  --name NAME         the slice
  --zone ZONE         its zone
  --yes               do not ask for confirmation
  --project PROJECT   default: gcloud's configured project
  -h, --help          this text

Exit codes: 0 deleted, 2 bad flags, otherwise gcloud's exit code."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

opt_name='' opt_zone='' opt_project='' opt_yes=''
parse_flags "name zone project yes?" "$@"
require name zone

say "deleting slice $opt_name in $opt_zone"
if [[ -n $opt_yes ]]; then
  tpu_vm delete "$opt_name" --quiet
else
  tpu_vm delete "$opt_name"
fi
