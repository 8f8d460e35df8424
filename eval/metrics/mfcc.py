"""MFCC as ``python_speech_features.mfcc`` (0.6) computes it with its defaults — SyncNet's audio input.

Re-implemented in numpy so that evaluation does not need the package (its output is compared
with the package's in tests/test_metrics.py when it is installed). Steps, for 16 kHz input:

1. pre-emphasis ``y[0] = x[0]; y[n] = x[n] − 0.97·x[n−1]``;
2. frames of 400 samples every 160 (25 ms / 10 ms: 100 frames/s), rectangular window; the last
   frame is zero-padded; ``1 + ceil((len − 400)/160)`` frames (1 if len ≤ 400);
3. power spectrum ``|rfft(frame, 512)|² / 512``; frame energy = its sum;
4. 26 triangular mel filters between 0 Hz and Nyquist (mel = 2595·log10(1 + f/700)), edges at
   FFT bins ``floor((nfft + 1)·f/sr)``; zero energies replaced by float64 eps before the log;
5. DCT-II (orthonormal) of the log filterbank energies, first 13 coefficients, sinusoidal
   lifter L = 22, then coefficient 0 replaced by the log frame energy.

Scale matters (the log energies shift with it): syncnet_python feeds int16 sample values, so
:func:`eval.metrics.sync.sync_embeddings` multiplies float audio in [-1, 1] by 32768 first.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.fft import dct

EPS = np.finfo(float).eps


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(nfilt: int = 26, nfft: int = 512, samplerate: int = 16000,
                   lowfreq: float = 0.0, highfreq: float | None = None) -> np.ndarray:
    """Triangular filters on FFT bins. -> (nfilt, nfft//2 + 1) float64."""
    highfreq = samplerate / 2 if highfreq is None else highfreq
    mels = np.linspace(hz_to_mel(lowfreq), hz_to_mel(highfreq), nfilt + 2)
    edge = np.floor((nfft + 1) * mel_to_hz(mels) / samplerate)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = edge[j], edge[j + 1], edge[j + 2]
        up = np.arange(int(lo), int(mid))
        down = np.arange(int(mid), int(hi))
        fb[j, up] = (up - lo) / (mid - lo)
        fb[j, down] = (hi - down) / (hi - mid)
    return fb


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def frame_signal(x: np.ndarray, frame_len: int, frame_step: int) -> np.ndarray:
    """Overlapping frames, the tail zero-padded. (L,) -> (n_frames, frame_len)."""
    n = 1 if len(x) <= frame_len else 1 + int(math.ceil((len(x) - frame_len) / frame_step))
    padded = np.concatenate([x, np.zeros((n - 1) * frame_step + frame_len - len(x))])
    return np.lib.stride_tricks.sliding_window_view(padded, frame_len)[::frame_step][:n]


#: frames per block (41 s of audio): memory of :func:`mfcc` is O(block), whatever the length
BLOCK_FRAMES = 4096


def mfcc(signal, samplerate: int = 16000, winlen: float = 0.025, winstep: float = 0.01,
         numcep: int = 13, nfilt: int = 26, nfft: int = 512, lowfreq: float = 0.0,
         highfreq: float | None = None, preemph: float = 0.97, ceplifter: int = 22,
         append_energy: bool = True, scale: float = 1.0) -> np.ndarray:
    """MFCCs of a mono signal. (L,) -> (n_frames, numcep) float64, n_frames ≈ L / (winstep·sr).

    ``scale`` multiplies the samples first (in float64). Computed in blocks of
    :data:`BLOCK_FRAMES` frames: the same numbers as all frames at once, in bounded memory.
    """
    x = np.asarray(signal)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"Expected a non-empty mono signal of shape (L,). Got {x.shape}.")
    flen, fstep = _round_half_up(winlen * samplerate), _round_half_up(winstep * samplerate)
    n = 1 if len(x) <= flen else 1 + int(math.ceil((len(x) - flen) / fstep))
    fb = mel_filterbank(nfilt, nfft, samplerate, lowfreq, highfreq).T
    out = np.empty((n, numcep))
    for f0 in range(0, n, BLOCK_FRAMES):
        f1 = min(n, f0 + BLOCK_FRAMES)
        s0, s1 = f0 * fstep, min(len(x), (f1 - 1) * fstep + flen)
        seg = x[max(s0 - 1, 0):s1].astype(np.float64) * scale
        y = np.concatenate([seg[:1], seg[1:] - preemph * seg[:-1]]) if s0 == 0 else seg[1:] - preemph * seg[:-1]
        frames = frame_signal(y, flen, fstep)[: f1 - f0]
        out[f0:f1] = _cepstra(frames, nfft, fb, numcep, ceplifter, append_energy)
    return out


def _cepstra(frames: np.ndarray, nfft: int, fb: np.ndarray, numcep: int, ceplifter: int,
             append_energy: bool) -> np.ndarray:
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = pspec.sum(axis=1)
    energy = np.where(energy == 0, EPS, energy)
    feat = pspec @ fb
    feat = np.where(feat == 0, EPS, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    if ceplifter > 0:
        cep = cep * (1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(cep.shape[1]) / ceplifter))
    if append_energy:
        cep[:, 0] = np.log(energy)
    return cep
