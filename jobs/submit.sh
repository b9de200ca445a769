#!/usr/bin/env bash
# Submit a goracs run to a Ray cluster through the Jobs API.
#   RAY_ADDRESS=http://127.0.0.1:8265 jobs/submit.sh jobs/configs/cluster_llama.yaml [--set k=v ...]
# The working directory (this repo) is uploaded; the cluster's image must have goracs_ray's
# dependencies installed (cluster/Dockerfile). Logs stream until the job ends.
set -euo pipefail
config=${1:?usage: jobs/submit.sh CONFIG.yaml [--set key=value ...]}
shift
cd "$(dirname "$0")/.."
# HF_HUB_OFFLINE, when you set it, goes to the job (e.g. HF_HUB_OFFLINE=1 for weights on shared
# storage); otherwise the cluster's own environment decides.
env_json='{}'
if [[ -n "${HF_HUB_OFFLINE:-}" ]]; then
  env_json="{\"env_vars\": {\"HF_HUB_OFFLINE\": \"${HF_HUB_OFFLINE}\"}}"
fi
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . \
  --runtime-env-json "$env_json" \
  -- python -m goracs_ray.cli run "$config" "$@"
