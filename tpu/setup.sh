#!/usr/bin/env bash
# Copy this checkout to every worker of a slice and install jaxlm there.
set -euo pipefail
PROG=setup.sh
USAGE="Usage: tpu/setup.sh --name NAME --zone ZONE [options]

Packs this checkout (tracked and untracked files that git does not ignore; no .venv, no runs),
copies it to every worker (~/jaxlm) and runs 'tpu/worker.sh install' on all of them at once:
Python 3.11 from apt if missing, ~/jaxlm/.venv with jaxlm and JAX's TPU build, the asset
packages (the default model and corpora). Safe to run again after editing the code.

Options:
  --name NAME         the slice (tpu/create.sh)
  --zone ZONE         its zone
  --python PY         Python on the workers (default python3.11, from apt if missing)
  --source DIR        checkout to copy (default: the one this script is in)
  --project PROJECT   default: gcloud's configured project
  -h, --help          this text

Exit codes: 0 installed on every worker, 2 bad flags, otherwise the failing step's code."
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

opt_name='' opt_zone='' opt_project='' opt_python=python3.11 opt_source=$REPO_DIR
parse_flags "name zone project python source" "$@"
require name zone
[[ -f $opt_source/pyproject.toml ]] || die "--source $opt_source is not a jaxlm checkout (no pyproject.toml)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "packing $opt_source"
if git -C "$opt_source" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (
    cd "$opt_source"
    git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' path; do [[ ! -e $path ]] || printf '%s\0' "$path"; done |
      tar --null -T - -czf "$work/jaxlm.tgz"
  )
else
  tar -czf "$work/jaxlm.tgz" -C "$opt_source" --exclude=./.venv --exclude=./runs --exclude=./.git .
fi

say "copying it to every worker of $opt_name"
tpu_vm scp "$work/jaxlm.tgz" "$opt_name:jaxlm.tgz" --worker=all
say "installing on every worker (a few minutes)"
# shellcheck disable=SC2016  # expanded on the workers
on_workers all bash -c 'mkdir -p "$1" && tar -xzf jaxlm.tgz -C "$1" && bash "$1/tpu/worker.sh" install --python "$2"' \
  _ "$REMOTE_CHECKOUT" "$opt_python"
