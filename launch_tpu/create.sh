#!/usr/bin/env bash
# Create a Cloud TPU VM (a single host or a pod slice).
#
#   launch_tpu/create.sh --name s2d --zone us-central2-b --type v4-32 [--project P] [--spot]
#   launch_tpu/create.sh --dry-run ...        # print the gcloud command, run nothing
#
# Each flag may come from the environment instead: TPU_NAME, TPU_ZONE, TPU_TYPE, TPU_PROJECT,
# TPU_VERSION (the TPU VM image; default chosen from the type, see runtime_version below).
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
TYPE=${TPU_TYPE:-}
PROJECT=${TPU_PROJECT:-}
VERSION=${TPU_VERSION:-}
SPOT=0
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --type) TYPE=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "create.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for var in NAME ZONE TYPE; do
  if [[ -z ${!var} ]]; then
    echo "create.sh: --$(tr '[:upper:]' '[:lower:]' <<<"$var") (or TPU_$var) is required" >&2
    exit 2
  fi
done

# The TPU VM image each generation expects (override with --version).
runtime_version() {
  case $1 in
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}
VERSION=${VERSION:-$(runtime_version "$TYPE")}

# --dry-run prints each command as a shell line (words quoted only where needed) instead.
run() {
  if [[ $DRY_RUN == 0 ]]; then "$@"; return; fi
  local word words=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then words+=("$word")
    else words+=("'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}

cmd=(gcloud compute tpus tpu-vm create "$NAME" "--zone=$ZONE" "--accelerator-type=$TYPE"
     "--version=$VERSION")
[[ -n $PROJECT ]] && cmd+=("--project=$PROJECT")
[[ $SPOT == 1 ]] && cmd+=(--spot)
run "${cmd[@]}"
