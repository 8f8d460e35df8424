"""What an installed radio (a wheel, not the checkout) carries: the Python versions its pins allow."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "requirements.txt", "MANIFEST.in", "README.md", "radio", "preprocess", "pipelines", "eval",
           "configs")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the sources a build reads (no stale build/ or egg-info of the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    """A wheel built the documented way."""
    src = source
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    "."], cwd=src, check=True, timeout=300, capture_output=True)
    (whl,) = dist.glob("radio-*.whl")
    return whl


def test_the_wheel_requires_python_3_11(wheel):
    """numpy 2.4 and av 18.1 need 3.11: a 3.10 pip must refuse radio itself, not fail resolving its pins."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    assert meta["Requires-Python"] == ">=3.11,<3.13"
