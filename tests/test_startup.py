"""Start-up of `radio preprocess`: no more local workers than inputs, and a lean worker warm-up."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal

from pipelines import options as options_mod
from pipelines import preprocess as preprocess_job
from preprocess import audio

REPO = Path(__file__).resolve().parents[1]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("spec, expected", [("00015.mp4", 1), ("*.mp4", None)])
def test_local_workers_never_outnumber_inputs(monkeypatch, tmp_path, data_dir, spec, expected):
    asked = []

    def spy(pipeline_args, *, job_name, workers=None, reach=()):
        asked.append(workers)
        raise _Stop

    monkeypatch.setattr(options_mod, "build", spy)
    with pytest.raises(_Stop):
        preprocess_job.run_job(str(data_dir / spec), str(tmp_path / "ds"))
    n_inputs = len(list(data_dir.glob(spec)))
    assert asked == [expected or min(n_inputs, os.cpu_count() or 1)]
    assert not (tmp_path / "ds").exists()  # nothing written before the job starts


def test_one_worker_runs_in_this_process_and_more_in_worker_processes():
    from apache_beam.options.pipeline_options import DirectOptions

    one = options_mod.build([], job_name="t", workers=1).options.view_as(DirectOptions)
    assert (one.direct_num_workers, one.direct_running_mode) == (1, "in_memory")
    two = options_mod.build([], job_name="t", workers=2).options.view_as(DirectOptions)
    assert (two.direct_num_workers, two.direct_running_mode) == (2, "multi_processing")
    forced = options_mod.build(["--direct_num_workers=2"], job_name="t", workers=1).options.view_as(DirectOptions)
    assert forced.direct_num_workers == 2  # an explicit Beam option wins


def test_log_mel_is_librosa_bit_for_bit(data_dir):
    """The numpy STFT + mel basis reproduce librosa 0.11's values exactly (stored mels unchanged)."""
    wav = audio.load_audio(data_dir / "00015.mp4")
    y = scipy.signal.lfilter([1.0, -0.97], [1.0], wav.astype(np.float64)).astype(np.float32)
    spec = np.abs(librosa.stft(y=y, n_fft=1280, hop_length=160, win_length=1280, window="hann",
                               center=True, pad_mode="reflect"))
    basis = librosa.filters.mel(sr=16000, n_fft=1280, n_mels=80, fmin=55.0, fmax=7600.0, htk=False,
                                norm="slaney")
    ref = np.ascontiguousarray(np.log10(np.maximum(basis @ spec, 1e-5)).T, dtype=np.float32)
    assert np.array_equal(audio._mel_basis(16000), basis)
    assert np.array_equal(audio.log_mel(wav), ref)
    odd = wav[: 16000 + 77]  # a length that is no multiple of the hop
    y = scipy.signal.lfilter([1.0, -0.97], [1.0], odd.astype(np.float64)).astype(np.float32)
    spec = np.abs(librosa.stft(y=y, n_fft=1280, hop_length=160, center=True, pad_mode="reflect"))
    assert np.array_equal(audio.log_mel(odd), np.log10(np.maximum(basis @ spec, 1e-5)).T)


def test_worker_warm_up_imports_neither_librosa_nor_scipy():
    code = ("import sys; from preprocess import source; source.warm_up(); "
            "print(sorted(m for m in ('librosa', 'scipy', 'numba', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.strip() == "[]"
