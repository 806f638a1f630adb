# shellcheck shell=bash disable=SC2034  # the variables set here are read by the sourcing script
# Shared by create.sh, run.sh, logs.sh and delete.sh (sourced, not run): the flags every script
# takes, the required-flag check, and the --dry-run printer.
#
# A script sets SCRIPT (its name, for messages) and defines usage() before sourcing this file,
# handles its own flags in its `case`, and passes every other one to `common_flag "$@"`, which
# sets SHIFT to the number of words it took (it exits with a message on an unknown flag).

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
DRY_RUN=0
SHIFT=0

common_flag() {
  case $1 in
    --name) NAME=$2; SHIFT=2 ;;
    --zone) ZONE=$2; SHIFT=2 ;;
    --project) PROJECT=$2; SHIFT=2 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$SCRIPT: unknown argument '$1'${UNKNOWN_HINT:-}" >&2; usage >&2; exit 2 ;;
  esac
}

# require VAR...: each named flag variable must be set (by its flag or TPU_<VAR>).
require() {
  local var
  for var in "$@"; do
    if [[ -z ${!var} ]]; then
      echo "$SCRIPT: --$(tr '[:upper:]' '[:lower:]' <<<"$var") (or TPU_$var) is required" >&2
      exit 2
    fi
  done
}

# run CMD...: runs it, or with --dry-run prints it as a shell line (words quoted only where
# needed) so the tests and the user can read exactly what would run.
run() {
  if [[ $DRY_RUN == 0 ]]; then "$@"; return; fi
  local word words=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then words+=("$word")
    else words+=("'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}
