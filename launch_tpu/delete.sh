#!/usr/bin/env bash
# Delete a Cloud TPU VM (every worker of the slice, and its local disks).
#
#   launch_tpu/delete.sh --name s2d --zone us-central2-b [--project P] [--yes]
#   launch_tpu/delete.sh --dry-run ...        # print the gcloud command, run nothing
#
# TPU_NAME, TPU_ZONE, TPU_PROJECT may replace the flags. Without --yes gcloud asks to confirm.
set -euo pipefail

SCRIPT=delete.sh

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
# shellcheck source=launch_tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

YES=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --yes) YES=1; shift ;;
    *) common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require NAME ZONE

cmd=(gcloud compute tpus tpu-vm delete "$NAME" "--zone=$ZONE")
[[ -n $PROJECT ]] && cmd+=("--project=$PROJECT")
[[ $YES == 1 ]] && cmd+=(--quiet)
run "${cmd[@]}"
