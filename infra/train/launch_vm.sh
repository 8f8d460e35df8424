#!/usr/bin/env bash
# Train RADIO on a spot GPU VM, and keep it training across preemptions until the run is done.
#   GPUS=8 infra/train/launch_vm.sh radio-train-1 gs://BUCKET/datasets/lrw-v1 gs://BUCKET/runs/radio-192
#   infra/train/launch_vm.sh --watch radio-train-1      # restart it after each preemption, until done
#   infra/train/launch_vm.sh --print NAME DATA RUN      # print the startup/shutdown scripts, create nothing
#
# Preemption: GCE gives a spot VM 30 s notice and runs its shutdown script, which sends SIGTERM to
# torchrun and waits; torchrun signals its ranks, which finish the step, agree on it, write its
# checkpoint to RUN (logged "checkpoint written N s after the signal") and exit 143 (loader workers
# ignore the signal: radio/train/preempt.py). The VM is then STOPPED, disk kept
# (--instance-termination-action STOP). Starting it again (--watch does, or
# `gcloud compute instances start NAME`) re-runs the startup script: the same command, which resumes
# from RUN's newest checkpoint. Nothing is reinstalled on a restart.
# The VM reports through its metadata key radio-train-status: running | done | failed:RC. On done
# (rc 0, the last step reached) and on failed (any other exit not caused by the shutdown script) it
# powers off, and --watch stops: it deletes a done VM (KEEP_VM=1 keeps it) and prints the failure.
# Logs: /var/log/radio-train.log on the VM and its serial console.
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}"
gc=(gcloud --project "$PROJECT")

status_of() {   # metadata radio-train-status of VM $1 and its state; "gone" when it does not exist
  "${gc[@]}" compute instances describe "$1" --zone "$ZONE" --format=json 2>/dev/null | python3 -c '
import json, sys
vm = json.load(sys.stdin)
items = {i["key"]: i.get("value", "") for i in vm.get("metadata", {}).get("items", [])}
print(items.get("radio-train-status", "none"), vm["status"])' || echo "gone gone"
}

if [ "${1:-}" = "--watch" ]; then
  name=$2
  while :; do
    read -r result state < <(status_of "$name")
    case "$result/$state" in
      gone/*) echo "$name: no such VM"; exit 1 ;;
      done/*) echo "$name: training finished"
              [ "${KEEP_VM:-0}" = 1 ] || "${gc[@]}" compute instances delete "$name" --zone "$ZONE" --quiet
              exit 0 ;;
      failed*) echo "$name: trainer $result; see /var/log/radio-train.log or its serial console"; exit 1 ;;
      */TERMINATED|*/STOPPED)
        echo "$(date -u +%FT%TZ) $name stopped (preempted?): starting it again"
        "${gc[@]}" compute instances start "$name" --zone "$ZONE" || echo "start refused (no spot capacity?); retrying" ;;
    esac
    sleep "${WATCH_EVERY:-60}"
  done
fi

print=0
if [ "${1:-}" = "--print" ]; then print=1; shift; fi
name=$1; data=$2; out=$3
gpus=${GPUS:-1}; accel=${ACCEL:-nvidia-h100-80gb}; mtype=${MACHINE:-a3-highgpu-${gpus}g}
config=${CONFIG:-configs/paper-192.yaml}

startup=$(cat <<SCRIPT
#!/bin/bash
# radio train: runs on every boot; resumes from the newest checkpoint in ${out}
set -u
status() { gcloud compute instances add-metadata ${name} --zone ${ZONE} --metadata radio-train-status=\$1 || true; }
cd /opt && { [ -d radio ] || git clone ${REPO:-https://example.invalid/radio.git} radio; } && cd radio || exit 1
if [ ! -e .venv/installed ]; then
  # radio needs Python 3.11 (setup.py) and the image's python3 is older: uv makes a 3.11 venv whatever
  # the image holds (it downloads 3.11 into /opt/uv-python when the image has none). uv itself is
  # pip-installed into /opt/uv (the image's python3 only runs pip) or, without a working pip, fetched
  # by its standalone installer.
  export HOME=\${HOME:-/root} UV_PYTHON_INSTALL_DIR=/opt/uv-python
  uv=\$(command -v uv || command -v /opt/uv/bin/uv) \\
    || { python3 -m pip install -q --target /opt/uv uv && uv=/opt/uv/bin/uv; } \\
    || { curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=/opt/uv/bin UV_NO_MODIFY_PATH=1 sh \\
         && uv=/opt/uv/bin/uv; } || { status failed:install; poweroff; exit 1; }
  rm -rf .venv && "\$uv" venv --seed --python 3.11 .venv \\
    && .venv/bin/pip install -q -e . --extra-index-url https://download.pytorch.org/whl/cu124 \\
    && touch .venv/installed || { status failed:install; poweroff; exit 1; }
fi
rm -f /run/radio-train.stopping
status running
.venv/bin/torchrun --standalone --nproc_per_node=${gpus} -m radio.cli train --config ${config} \\
  --data ${data} --output ${out} > >(tee -a /var/log/radio-train.log) 2>&1 &
echo \$! > /run/radio-train.pid
wait \$!; rc=\$?
rm -f /run/radio-train.pid
[ -e /run/radio-train.stopping ] && exit 0        # preempted or stopped: the next boot resumes
if [ \$rc = 0 ]; then status done; else status failed:\$rc; fi
poweroff
SCRIPT
)
shutdown=$(cat <<'SCRIPT'
#!/bin/bash
# preemption notice (30 s): SIGTERM to torchrun, then wait for the checkpoint and a clean exit
pid=$(cat /run/radio-train.pid 2>/dev/null) || exit 0
touch /run/radio-train.stopping
kill -TERM "$pid" 2>/dev/null || exit 0
for _ in $(seq 1 270); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
SCRIPT
)
if [ "$print" = 1 ]; then
  printf '%s\n' "$startup" "----- shutdown-script -----" "$shutdown"
  exit 0
fi
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
printf '%s\n' "$startup" > "$dir/startup.sh"; printf '%s\n' "$shutdown" > "$dir/shutdown.sh"
"${gc[@]}" compute instances create "$name" --zone "$ZONE" \
  --machine-type "$mtype" --accelerator "type=${accel},count=${gpus}" \
  --provisioning-model SPOT --instance-termination-action STOP \
  --image-family common-cu124-debian-11 --image-project deeplearning-platform-release \
  --boot-disk-size 200GB --scopes cloud-platform \
  --metadata-from-file "startup-script=$dir/startup.sh,shutdown-script=$dir/shutdown.sh"
echo "created $name; keep it training across preemptions with: $0 --watch $name"
