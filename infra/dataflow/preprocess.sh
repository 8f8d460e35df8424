#!/usr/bin/env bash
# Submit `radio preprocess` to Dataflow.
#   infra/dataflow/preprocess.sh gs://BUCKET/videos/manifest.csv gs://BUCKET/datasets/vox2-v1
# Needs: PROJECT, REGION, BUCKET; IMAGE (built from infra/dataflow/Dockerfile) or it stages
# setup.py instead. Re-run with --resume after a failure: finished sources are skipped.
set -euo pipefail
input=$1; output=$2; shift 2
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}"
args=(--runner DataflowRunner --project "$PROJECT" --region "$REGION"
      --temp_location "gs://$BUCKET/tmp" --staging_location "gs://$BUCKET/staging"
      --machine_type n2-standard-8 --max_num_workers "${MAX_WORKERS:-100}"
      --experiments use_runner_v2 --number_of_worker_harness_threads 8)
if [ -n "${IMAGE:-}" ]; then
  args+=(--sdk_container_image "$IMAGE")
else
  args+=(--setup_file "$(cd "$(dirname "$0")/../.." && pwd)/setup.py")
fi
exec radio preprocess --input "$input" --output "$output" "${args[@]}" "$@"
