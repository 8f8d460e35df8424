"""Worker processes import radio's own code, whatever folder the command runs in.

Beam's local workers (``python -m apache_beam…sdk_worker_main``) and preprocess's decode child
(``python -m preprocess.worker``) put their current folder first on ``sys.path``. A folder holding
a ``preprocess.py`` or ``eval.py`` (or an old checkout) made them import that instead of the
installed radio: a failed job, or an old checkout's metric code giving other scores silently.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import CLIP, ffmpeg

RADIO = Path(sys.executable).parent / "radio"   # the console script: its own folder, not the cwd, on sys.path


def test_modules_named_like_radios_packages_in_the_current_folder_do_not_replace_its_code(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("preprocess.py", "eval.py", "pipelines.py"):
        (work / name).write_text("raise RuntimeError('imported from the current folder')\n")
    for i in range(2):   # two inputs: two Beam worker processes, each with its decode child
        ffmpeg("-i", str(CLIP), "-t", "2.5", "-c", "copy", str(work / f"clip{i}.mp4"))
    p = subprocess.run([str(RADIO), "preprocess", "--input", "clip*.mp4", "--output", "out", "--no-progress"],
                       cwd=work, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads(next((work / "out" / "runs").glob("*/summary.json")).read_text())
    assert summary["sources_with_rows"] == 2 and summary["counts_add_up"], summary
