#!/usr/bin/env bash
# Create a Cloud TPU VM slice.
set -euo pipefail
PROG=create.sh
USAGE="Usage: tpu/create.sh --name NAME --zone ZONE --accelerator-type TYPE [options]

Creates a TPU VM slice (billing starts when it is READY and stops when it is deleted:
tpu/delete.sh). One host for types up to 8 chips (v5litepod-8, v4-8), several hosts above.

Options:
  --name NAME               slice name, e.g. jaxlm-v5e
  --zone ZONE               e.g. us-west4-a (v5e), us-central2-b (v4)
  --accelerator-type TYPE   e.g. v5litepod-8, v4-32
  --version VERSION         TPU software version; default from the type:
                            v5litepod -> v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5,
                            v6e -> v2-alpha-tpuv6e, v2/v3/v4 -> tpu-ubuntu2204-base
  --spot                    Spot capacity: much cheaper, can be reclaimed at any time
  --preemptible             legacy preemptible capacity (at most 24 h); not with --spot
  --scopes SCOPES           service account scopes of the workers, e.g.
                            https://www.googleapis.com/auth/cloud-platform (to write to gs://)
  --project PROJECT         default: gcloud's configured project
  -h, --help                this text

Exit codes: 0 created, 2 bad flags, otherwise gcloud's exit code."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

opt_name='' opt_zone='' opt_project='' opt_accelerator_type='' opt_version='' opt_spot='' opt_preemptible='' opt_scopes=''
parse_flags "name zone project accelerator-type version spot? preemptible? scopes" "$@"
require name zone accelerator-type
[[ -z $opt_spot || -z $opt_preemptible ]] || die "--spot and --preemptible exclude each other"

default_version() {
  case $1 in
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default --version for --accelerator-type $1; give --version" ;;
  esac
}
version=${opt_version:-$(default_version "$opt_accelerator_type")}

extra=()
[[ -z $opt_spot ]] || extra=(--spot)
[[ -z $opt_preemptible ]] || extra=(--preemptible)
[[ -z $opt_scopes ]] || extra+=(--scopes="$opt_scopes")

say "creating $opt_accelerator_type slice $opt_name in $opt_zone ($version${opt_spot:+, spot}${opt_preemptible:+, preemptible})"
tpu_vm create "$opt_name" --accelerator-type="$opt_accelerator_type" --version="$version" ${extra[@]+"${extra[@]}"}
