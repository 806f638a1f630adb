#!/usr/bin/env bash
# Create a Cloud TPU VM (a single host or a pod slice).
#
#   launch_tpu/create.sh --name s2d --zone us-central2-b --type v4-32 [--project P] [--spot]
#   launch_tpu/create.sh --dry-run ...        # print the gcloud command, run nothing
#
# Each flag may come from the environment instead: TPU_NAME, TPU_ZONE, TPU_TYPE, TPU_PROJECT,
# TPU_VERSION (the TPU VM image; default chosen from the type, see runtime_version below).
set -euo pipefail

SCRIPT=create.sh

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
# shellcheck source=launch_tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TYPE=${TPU_TYPE:-}
VERSION=${TPU_VERSION:-}
SPOT=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --type) TYPE=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    *) common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require NAME ZONE TYPE

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

cmd=(gcloud compute tpus tpu-vm create "$NAME" "--zone=$ZONE" "--accelerator-type=$TYPE"
     "--version=$VERSION")
[[ -n $PROJECT ]] && cmd+=("--project=$PROJECT")
[[ $SPOT == 1 ]] && cmd+=(--spot)
run "${cmd[@]}"
