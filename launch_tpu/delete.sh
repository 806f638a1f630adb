#!/usr/bin/env bash
# Delete a Cloud TPU VM (every worker of the slice, and its local disks).
#
#   launch_tpu/delete.sh --name s2d --zone us-central2-b [--project P] [--yes]
#   launch_tpu/delete.sh --dry-run ...        # print the gcloud command, run nothing
#
# TPU_NAME, TPU_ZONE, TPU_PROJECT may replace the flags. Without --yes gcloud asks to confirm.
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
YES=0
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --yes) YES=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "delete.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for var in NAME ZONE; do
  if [[ -z ${!var} ]]; then
    echo "delete.sh: --$(tr '[:upper:]' '[:lower:]' <<<"$var") (or TPU_$var) is required" >&2
    exit 2
  fi
done

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

cmd=(gcloud compute tpus tpu-vm delete "$NAME" "--zone=$ZONE")
[[ -n $PROJECT ]] && cmd+=("--project=$PROJECT")
[[ $YES == 1 ]] && cmd+=(--quiet)
run "${cmd[@]}"
