#!/usr/bin/env bash
# Create a GPU VM and train RADIO on it.
#   GPUS=8 infra/train/launch_vm.sh radio-train-1 gs://BUCKET/datasets/lrw-v1 gs://BUCKET/runs/radio-192
# The VM is spot/preemptible-safe: the trainer checkpoints on SIGTERM and every N steps to the
# run folder, and the startup script re-runs the same command, which resumes from the latest.
set -euo pipefail
name=$1; data=$2; out=$3
: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}"
gpus=${GPUS:-1}; accel=${ACCEL:-nvidia-h100-80gb}; mtype=${MACHINE:-a3-highgpu-${gpus}g}
config=${CONFIG:-configs/paper-192.yaml}
startup=$(cat <<SCRIPT
#!/bin/bash
set -e
cd /opt && [ -d radio ] || git clone ${REPO:-https://example.invalid/radio.git} radio
cd radio && python3 -m venv .venv && .venv/bin/pip install -q -e . --extra-index-url https://download.pytorch.org/whl/cu124
.venv/bin/torchrun --standalone --nproc_per_node=${gpus} -m radio.train.cli --config ${config} --data ${data} --output ${out}
SCRIPT
)
gcloud compute instances create "$name" --project "$PROJECT" --zone "$ZONE" \
  --machine-type "$mtype" --accelerator "type=${accel},count=${gpus}" \
  --provisioning-model SPOT --instance-termination-action STOP \
  --image-family common-cu124-debian-11 --image-project deeplearning-platform-release \
  --boot-disk-size 200GB --scopes cloud-platform --metadata startup-script="$startup"
