"""What an installed radio (a wheel, not the checkout) carries: the bundled configs, that
``--config NAME`` finds them from any folder, and the Python versions its pins allow."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import yaml

from preprocess import config as config_mod

REPO = Path(__file__).resolve().parents[1]
BUNDLED = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
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


def test_the_wheel_carries_every_config_inside_the_package(wheel):
    assert BUNDLED == ["eval", "paper-192", "smoke-cpu"]
    with zipfile.ZipFile(wheel) as z:
        for name in BUNDLED:
            assert z.read(f"radio/configs/{name}.yaml") == (REPO / "configs" / f"{name}.yaml").read_bytes()
        assert not [n for n in z.namelist() if n.startswith("configs/")]


def test_the_sdist_builds_a_wheel_with_the_configs(source, tmp_path):
    """The sdist (what `--extra_package` ships to Dataflow workers, and what Beam builds from
    --setup_file) carries configs/ and builds the same package layout."""
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "sdist")], cwd=source, check=True,
                   timeout=300, capture_output=True)
    (sdist,) = (tmp_path / "sdist").glob("radio-*.tar.gz")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(sdist)], check=True, timeout=300, capture_output=True)
    (whl,) = (tmp_path / "dist").glob("radio-*.whl")
    with zipfile.ZipFile(whl) as z:
        assert {f"radio/configs/{name}.yaml" for name in BUNDLED} <= set(z.namelist())


def test_the_wheel_requires_python_3_11(wheel):
    """numpy 2.4 and av 18.1 need 3.11: a 3.10 pip must refuse radio itself, not fail resolving its pins."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    assert meta["Requires-Python"] == ">=3.11,<3.13"


def test_an_installed_wheel_resolves_a_bundled_name_from_any_folder(wheel, tmp_path):
    """Unpacked as pip installs it, run from a folder without configs/: the name and the documented
    configs/NAME.yaml both find the file inside the package."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    code = ("import json, sys; from preprocess import config as c; "
            "print(json.dumps([[c.resolve_config(v), c.read_yaml(v)] for v in sys.argv[1:]]))")
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONSAFEPATH="1")
    out = subprocess.run([sys.executable, "-c", code, "smoke-cpu", "configs/paper-192.yaml", "eval.yaml"], cwd=cwd,
                         env=env, capture_output=True, text=True, check=True, timeout=120).stdout
    got = json.loads(out)
    for (path, data), name in zip(got, ["smoke-cpu", "paper-192", "eval"]):
        assert path == str(site / "radio" / "configs" / f"{name}.yaml")
        assert data == yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", BUNDLED)
def test_config_by_name_loads_the_same_as_the_file(name, tmp_path, monkeypatch):
    path = str(REPO / "configs" / f"{name}.yaml")
    monkeypatch.chdir(tmp_path)                        # not the checkout: configs/ is not here
    expected = config_mod.read_yaml(path)
    for value in (name, f"{name}.yaml", f"configs/{name}.yaml", f"./configs/{name}.yaml"):
        assert config_mod.resolve_config(value) == path
        assert config_mod.read_yaml(value) == expected


def test_config_by_name_builds_the_same_train_config():
    from radio.train.config import load_train_config

    file = load_train_config(str(REPO / "configs" / "smoke-cpu.yaml"), ["run.steps=3"])
    assert load_train_config("smoke-cpu", ["run.steps=3"]) == file


def test_a_file_that_exists_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "smoke-cpu.yaml").write_text("run: {steps: 7}\n")
    (tmp_path / "eval").write_text("max_frames: 9\n")
    assert config_mod.read_yaml("configs/smoke-cpu.yaml") == {"run": {"steps": 7}}
    assert config_mod.read_yaml("eval") == {"max_frames": 9}
    assert config_mod.resolve_config("gs://b/smoke-cpu") == "gs://b/smoke-cpu"      # remote: never a name


def test_a_folder_is_no_config_file(tmp_path, monkeypatch):
    """`--config eval` run in the checkout named its eval/ package: 'not a config file (IsADirectoryError)'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval").mkdir()
    assert config_mod.resolve_config("eval") == config_mod.bundled_configs()["eval"]


@pytest.mark.parametrize("value", ["smoke", "configs/nope.yaml", "/no/such/dir/smoke-cpu.yaml"])
def test_an_unknown_config_lists_the_bundled_names_in_one_line(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.resolve_config(value)
    msg = str(e.value)
    assert "\n" not in msg and "no such config file" in msg and "bundled: eval, paper-192, smoke-cpu" in msg
