"""Sync-C / Sync-D (LSE-C / LSE-D) as joonson/syncnet_python computes them (SPEC "Evaluation").

Three layers, each usable alone:

1. :func:`sync_scores` — the arithmetic on embeddings. Video embeddings v (N, D) and audio
   embeddings a (N, D) of the same N 5-frame windows; the audio sequence is zero-padded by
   ``vshift`` (15) windows at both ends and, for every window i and offset index
   j = 0 … 2·vshift, ``dists[i, j] = ‖v_i − a_pad[i + j] + 1e-6‖₂`` (``torch.nn.functional.
   pairwise_distance``, eps included), i.e. video window i against audio window
   i + j − vshift. Then ``mean_dists[j]`` = mean over i; **Sync-D** = min_j mean_dists;
   **AV offset** = vshift − argmin_j; **Sync-C** = median_j(mean_dists) − Sync-D.
2. :func:`sync_embeddings` — SyncNet on one face track: 224×224 crops (RGB in, BGR 0–255 to the
   network), MFCC (:mod:`eval.metrics.mfcc`) of the 16 kHz audio at int16 scale;
   ``min_length = min(n_frames, floor(n_samples / 640))`` and windows ``v = 0 … min_length − 6``
   (video frames v … v+4, MFCC frames 4v … 4v+19), batches of 20.
3. :func:`evaluate_sync` — tracks (:mod:`eval.metrics.face_track`) + 1 + 2 on a full-frame
   video; a clip without a usable track is reported missing, never scored.

**Zero-padding bias on short clips.** At offset k = j − vshift the first or last |k| of the N
windows are compared with the zero padding, i.e. ``dists = ‖v_i‖`` — typically far larger than
a real audio–video distance. Their share |k|/N inflates ``mean_dists`` towards the extreme
offsets, more so the shorter the clip: the median (hence Sync-C) rises and the offset estimate is
pulled towards 0. At N ≈ 100 windows (the official 100-frame minimum track) offsets ±15 carry
15 % padded terms; at N = 30 they carry 50 %. Sync-D at the true offset is unbiased only when
that offset is 0. Scores are comparable between methods on the same clips, not across clip
lengths; the row records ``n_windows``.

Every result carries the SyncNet weights' sha256, a label and ``official_weights`` (digest equals
the released ``syncnet_v2.model``); a report must not present scores with
``official_weights: False`` as Sync-C/D.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from preprocess.weights import WeightsError

from .face_track import TrackConfig, build_tracks, crop_track, track_audio
from .mfcc import mfcc
from .syncnet import SyncNet

VSHIFT = 15
BATCH_SIZE = 20
SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_PER_FRAME = 4
WINDOW = 5  # video frames per window (20 MFCC frames)

METADATA = {
    "sync_c": {"name": "sync_c", "higher_is_better": True, "is_differentiable": False, "unit": ""},
    "sync_d": {"name": "sync_d", "higher_is_better": False, "is_differentiable": False, "unit": ""},
    "offset": {"name": "av_offset", "unit": "frames (25 fps)", "note": "vshift - argmin of mean distance"},
    "implementation": "syncnet_python (SyncNetInstance.evaluate, run_pipeline crops), vshift 15",
}


def calc_pdist(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """Distances of every video window to the audio windows at offsets −vshift … +vshift.

    video_emb, audio_emb: (N, D). Returns (N, 2·vshift + 1); column j is offset j − vshift.
    """
    if video_emb.ndim != 2 or video_emb.shape != audio_emb.shape:
        raise ValueError(f"Expected video and audio embeddings of the same shape (N, D). "
                         f"Got {tuple(video_emb.shape)} and {tuple(audio_emb.shape)}.")
    n, win = video_emb.shape[0], 2 * vshift + 1
    audio_p = F.pad(audio_emb, (0, 0, vshift, vshift))
    idx = torch.arange(n)[:, None] + torch.arange(win)[None, :]  # (N, win)
    return F.pairwise_distance(video_emb[:, None, :].expand(-1, win, -1), audio_p[idx])


def sync_scores(video_emb, audio_emb, vshift: int = VSHIFT) -> dict:
    """Offset, Sync-C, Sync-D from (N, D) embeddings (numpy or torch).

    Returns ``{'offset': int, 'sync_c': float, 'sync_d': float, 'dists': (N, 2·vshift+1),
    'mean_dists': (2·vshift+1,), 'vshift': int, 'n_windows': N}``.
    """
    v = torch.as_tensor(np.asarray(video_emb) if not torch.is_tensor(video_emb) else video_emb).float()
    a = torch.as_tensor(np.asarray(audio_emb) if not torch.is_tensor(audio_emb) else audio_emb).float()
    if len(v) == 0:
        raise ValueError("Expected at least one window. Got N=0.")
    dists = calc_pdist(v, a, vshift)
    mdist = dists.mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    return {"offset": int(vshift - minidx), "sync_c": float(torch.median(mdist) - minval),
            "sync_d": float(minval), "dists": dists.numpy(), "mean_dists": mdist.numpy(),
            "vshift": vshift, "n_windows": int(len(v))}


def audio_mfcc(audio, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """SyncNet's MFCC input. float audio in [-1, 1] (scaled by 32768 to int16 units) or int16
    samples, 16 kHz mono (L,) -> (13, M) with M ≈ L / 160."""
    a = np.asarray(audio)
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"Expected {SAMPLE_RATE} Hz audio (resample when loading). Got {sample_rate}.")
    if a.ndim != 1:
        raise ValueError(f"Expected mono audio of shape (L,). Got {a.shape}.")
    x = a.astype(np.float64) * (32768.0 if np.issubdtype(a.dtype, np.floating) else 1.0)
    return mfcc(x, SAMPLE_RATE).T


def sync_embeddings(model: SyncNet, crops, audio, sample_rate: int = SAMPLE_RATE,
                    batch_size: int = BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio embeddings of one track's windows.

    crops: (L, 224, 224, 3) uint8 **RGB**; audio: (M,) 16 kHz aligned with the crops' first
    frame. Returns two (N, 1024) float32 tensors, N = min(L, floor(M / 640)) − 5.
    """
    if model.weights_info is None:
        raise WeightsError("SyncNet has no loaded weights; build it with load_syncnet() "
                           "(a randomly initialised network never scores).")
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (224, 224, 3) or crops.dtype != np.uint8:
        raise ValueError(f"Expected crops uint8 of shape (L, 224, 224, 3). Got {crops.dtype} {crops.shape}.")
    cc = torch.from_numpy(audio_mfcc(audio, sample_rate)).float()  # (13, M')
    min_length = min(len(crops), len(np.asarray(audio)) // SAMPLES_PER_FRAME)
    last = min_length - WINDOW
    if last <= 0:
        raise ValueError(f"Expected more than {WINDOW} frames of video and audio. Got {min_length}.")
    device = next(model.parameters()).device
    vid = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1].transpose(3, 0, 1, 2))).float()  # (3, L, H, W) BGR
    v_out, a_out = [], []
    with torch.no_grad():
        for i in range(0, last, batch_size):
            js = range(i, min(last, i + batch_size))
            im = torch.stack([vid[:, j:j + WINDOW] for j in js]).to(device)
            au = torch.stack([cc[None, :, j * MFCC_PER_FRAME:j * MFCC_PER_FRAME + 20] for j in js]).to(device)
            v_out.append(model.forward_lip(im).cpu())
            a_out.append(model.forward_aud(au).cpu())
    return torch.cat(v_out), torch.cat(a_out)


def evaluate_sync(model: SyncNet, frames, boxes, audio, sample_rate: int = SAMPLE_RATE,
                  config: TrackConfig = TrackConfig(), vshift: int = VSHIFT) -> dict:
    """Sync-C/D of a full-frame 25 fps clip.

    frames: (T, H, W, 3) uint8 RGB (the pasted-back video, never 192 crops); boxes: per frame
    (K_t, 4) face boxes [x1, y1, x2, y2]; audio: (M,) 16 kHz mono from the clip's start.
    Each track is scored; the clip's ``sync_c``/``sync_d`` are the window-weighted means over
    tracks and ``offset`` that of the longest track. No track -> ``{'missing': True, ...}``.
    """
    frames = np.asarray(frames)
    if len(boxes) != len(frames):
        raise ValueError(f"Expected one box list per frame ({len(frames)}). Got {len(boxes)}.")
    if model.weights_info is None:
        raise WeightsError("SyncNet has no loaded weights; build it with load_syncnet().")
    meta = {**model.weights_info, "vshift": vshift, "track_config": dataclasses.asdict(config)}
    tracks = build_tracks(boxes, config)
    results = []
    for tr in tracks:
        crops, _ = crop_track(frames, tr, config)
        v, a = sync_embeddings(model, crops, track_audio(audio, tr, sample_rate, config.frame_rate), sample_rate)
        r = sync_scores(v, a, vshift)
        r["frames"] = (int(tr["frame"][0]), int(tr["frame"][-1]) + 1)
        results.append(r)
    if not results:
        return {"missing": True, "reason": f"no face track longer than {config.min_track} frames "
                f"with faces over {config.min_face_size} px", "tracks": [], **meta}
    w = np.array([r["n_windows"] for r in results], dtype=np.float64)
    return {"missing": False, "sync_c": float(np.dot(w, [r["sync_c"] for r in results]) / w.sum()),
            "sync_d": float(np.dot(w, [r["sync_d"] for r in results]) / w.sum()),
            "offset": results[int(np.argmax(w))]["offset"], "n_windows": int(w.sum()),
            "tracks": results, **meta}
