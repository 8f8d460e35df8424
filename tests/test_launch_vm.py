"""infra/train/launch_vm.sh: its VM startup and shutdown scripts, run here against fake torchrun,
gcloud and poweroff: a preemption notice stops training and leaves the VM to be restarted (and the
same command resumes), a finished run says done, a failed one says failed with its exit code."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_TORCHRUN = """#!/bin/bash
echo "torchrun $*" >> {t}/events
trap 'echo sigterm >> {t}/events; exit 1' TERM      # torchrun exits 1 after forwarding SIGTERM
[ -e {t}/rc ] && exit "$(cat {t}/rc)"
while :; do sleep 0.05; done
"""


def _scripts(t: Path) -> tuple[Path, Path, dict]:
    env = dict(os.environ, PROJECT="p", ZONE="z", GPUS="2")
    text = subprocess.run(["bash", str(ROOT / "infra/train/launch_vm.sh"), "--print", "vm1", "gs://b/ds", "gs://b/run"],
                          env=env, capture_output=True, text=True, check=True).stdout
    startup, shutdown = text.split("----- shutdown-script -----\n")
    for old, new in (("/opt", f"{t}/opt"), ("/run/", f"{t}/"), ("/var/log/", f"{t}/")):
        startup, shutdown = startup.replace(old, new), shutdown.replace(old, new)
    venv = t / "opt/radio/.venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "installed").touch()
    (venv / "bin/torchrun").write_text(FAKE_TORCHRUN.format(t=t))
    bin_ = t / "bin"
    bin_.mkdir()
    for name in ("gcloud", "poweroff"):
        (bin_ / name).write_text(f'#!/bin/bash\necho "{name} $*" >> {t}/events\n')
    for p in [venv / "bin/torchrun", bin_ / "gcloud", bin_ / "poweroff"]:
        p.chmod(0o755)
    (t / "startup.sh").write_text(startup)
    (t / "shutdown.sh").write_text(shutdown)
    return t / "startup.sh", t / "shutdown.sh", dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}")


def _wait_for(path: Path, text: str, count: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not (path.exists() and path.read_text().count(text) >= count):
        assert time.monotonic() < end, path.read_text() if path.exists() else "no events"
        time.sleep(0.05)


def test_preemption_notice_stops_torchrun_and_the_next_boot_reruns_it(tmp_path):
    startup, shutdown, env = _scripts(tmp_path)
    events = tmp_path / "events"
    for boot in (1, 2):
        vm = subprocess.Popen(["bash", str(startup)], env=env)
        _wait_for(events, "torchrun ", boot)
        t0 = time.monotonic()
        assert subprocess.run(["bash", str(shutdown)], env=env, timeout=40).returncode == 0
        assert time.monotonic() - t0 < 28 and vm.wait(timeout=10) == 0
        log = events.read_text()
        assert log.count("sigterm") == boot and log.count("radio-train-status=running") == boot
        assert "poweroff" not in log and "status=failed" not in log and "status=done" not in log
    commands = [line for line in log.splitlines() if line.startswith("torchrun ")]
    assert commands[0] == commands[1] == ("torchrun --standalone --nproc_per_node=2 -m radio.cli train --config "
                                          "configs/paper-192.yaml --data gs://b/ds --output gs://b/run")


@pytest.mark.parametrize("rc, status", [(0, "done"), (3, "failed:3")])
def test_a_run_that_ends_reports_and_powers_off(tmp_path, rc, status):
    startup, _, env = _scripts(tmp_path)
    (tmp_path / "rc").write_text(str(rc))
    assert subprocess.run(["bash", str(startup)], env=env, timeout=30).returncode == 0
    lines = (tmp_path / "events").read_text().splitlines()
    assert lines[-2:] == [f"gcloud compute instances add-metadata vm1 --zone z --metadata radio-train-status={status}",
                          "poweroff "]


FAKE_UV = """#!/bin/bash
echo "uv $* UV_PYTHON_INSTALL_DIR=$UV_PYTHON_INSTALL_DIR" >> {t}/events
[ "$1" = venv ] || exit 2
mkdir -p "${{@: -1}}/bin"
printf '#!/bin/bash\\necho "pip $*" >> {t}/events\\n' > "${{@: -1}}/bin/pip"
cp {t}/torchrun "${{@: -1}}/bin/torchrun"
chmod +x "${{@: -1}}/bin/pip" "${{@: -1}}/bin/torchrun"
"""


def _first_boot(t: Path, uv_on_path: bool) -> tuple[Path, dict]:
    """The startup script on a VM that has no radio venv yet (one left by an older python3 -m venv,
    without the installed marker); uv on PATH, or only the image's python3 to pip-install it."""
    startup, _, env = _scripts(t)
    venv = t / "opt/radio/.venv"
    (venv / "installed").unlink()
    (venv / "bin/python3.9").touch()                      # what the image's python3 made
    (venv / "bin/torchrun").rename(t / "torchrun")
    (t / "rc").write_text("0")
    fake_uv = FAKE_UV.format(t=t)
    if uv_on_path:
        (t / "bin/uv").write_text(fake_uv)
        (t / "bin/uv").chmod(0o755)
    else:   # python3 -m pip install -q --target DIR uv -> DIR/bin/uv
        (t / "bin/python3").write_text(f'#!/bin/bash\necho "python3 $*" >> {t}/events\n'
                                       f'[ "$*" = "-m pip install -q --target {t}/opt/uv uv" ] || exit 1\n'
                                       f'mkdir -p "$6/bin" && cat > "$6/bin/uv" <<\'UV\'\n{fake_uv}UV\n'
                                       'chmod +x "$6/bin/uv"\n')
        (t / "bin/python3").chmod(0o755)
        env["PATH"] = f"{t}/bin:/usr/bin:/bin"
    return startup, env


@pytest.mark.parametrize("uv_on_path", [True, False])
def test_first_boot_makes_a_python_3_11_venv_whatever_the_image_python(tmp_path, uv_on_path):
    """The image's python3 (common-cu124-debian-11) is older than radio's 3.11: the venv is uv's 3.11
    one, and radio is installed into it with the CUDA torch index, once (.venv/installed)."""
    startup, env = _first_boot(tmp_path, uv_on_path)
    assert subprocess.run(["bash", str(startup)], env=env, timeout=30).returncode == 0
    lines = (tmp_path / "events").read_text().splitlines()
    if not uv_on_path:
        assert lines[0] == f"python3 -m pip install -q --target {tmp_path}/opt/uv uv"
        lines = lines[1:]
    assert lines[0] == f"uv venv --seed --python 3.11 .venv UV_PYTHON_INSTALL_DIR={tmp_path}/opt/uv-python"
    assert lines[1] == "pip install -q -e . --extra-index-url https://download.pytorch.org/whl/cu124"
    assert lines[-2:] == ["gcloud compute instances add-metadata vm1 --zone z --metadata radio-train-status=done",
                          "poweroff "]
    venv = tmp_path / "opt/radio/.venv"
    assert (venv / "installed").exists() and not (venv / "bin/python3.9").exists()
    assert "python3 -m venv" not in startup.read_text()


def test_a_failed_install_reports_it_and_powers_off(tmp_path):
    startup, env = _first_boot(tmp_path, uv_on_path=True)
    (tmp_path / "bin/uv").write_text("#!/bin/bash\nexit 1\n")
    assert subprocess.run(["bash", str(startup)], env=env, timeout=30).returncode == 1
    lines = (tmp_path / "events").read_text().splitlines()
    assert lines == ["gcloud compute instances add-metadata vm1 --zone z --metadata radio-train-status=failed:install",
                     "poweroff "]
    assert not (tmp_path / "opt/radio/.venv/installed").exists()
