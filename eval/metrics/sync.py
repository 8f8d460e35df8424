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
3. :class:`SyncStream` / :func:`evaluate_sync` — tracks (:mod:`eval.metrics.face_track`) + 1 + 2
   on a full-frame video, fed in chunks (only embeddings are kept); a clip without a usable track
   is reported missing with a ``status`` (``too_short_for_sync`` when tracks of ``min_track``
   frames or fewer were dropped, as officially), never scored.

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

from .face_track import TrackConfig, crop_frames, shot_tracks, smooth_track, track_audio
from .mfcc import mfcc
from .syncnet import SyncNet

VSHIFT = 15
BATCH_SIZE = 20
SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_PER_FRAME = 4
WINDOW = 5  # video frames per window (20 MFCC frames)
#: windows per SyncNet lip forward within a batch of 20: a 20-window forward holds ~130 MB on CPU
#: (its 5×224² input stack and first Conv3d), 5 windows ~40 MB. Per-window embeddings differ from
#: one 20-window forward by float rounding only (~1e-6 measured); batches stay 0…19, 20…39, …
LIP_SUB_BATCH = 5

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
    return scores_from_dists(calc_pdist(v, a, vshift), vshift)


def scores_from_dists(dists: torch.Tensor, vshift: int = VSHIFT) -> dict:
    """:func:`sync_scores` from the (N, 2·vshift+1) distances (:func:`calc_pdist`)."""
    if len(dists) == 0:
        raise ValueError("Expected at least one window. Got N=0.")
    mdist = dists.mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    return {"offset": int(vshift - minidx), "sync_c": float(torch.median(mdist) - minval),
            "sync_d": float(minval), "dists": dists.numpy(), "mean_dists": mdist.numpy(),
            "vshift": vshift, "n_windows": int(len(dists))}


def audio_mfcc(audio, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """SyncNet's MFCC input. float audio in [-1, 1] (scaled by 32768 to int16 units) or int16
    samples, 16 kHz mono (L,) -> (13, M) with M ≈ L / 160."""
    a = np.asarray(audio)
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"Expected {SAMPLE_RATE} Hz audio (resample when loading). Got {sample_rate}.")
    if a.ndim != 1:
        raise ValueError(f"Expected mono audio of shape (L,). Got {a.shape}.")
    return mfcc(a, SAMPLE_RATE, scale=32768.0 if np.issubdtype(a.dtype, np.floating) else 1.0).T


class WindowEmbedder:
    """SyncNet on one track's 5-frame windows, fed crops chunk by chunk.

    ``push`` crops (L', 224, 224, 3) uint8 **RGB** in order; ``finish`` returns the (N, 2·vshift+1)
    distances of :func:`calc_pdist` (or, with ``keep_embeddings``, the (N, 1024) video and audio
    embeddings), N = min(L, floor(n_samples / 640)) − 5. Windows go through the network in
    batches of ``batch_size`` by window index (0…19, 20…39, …), whatever the chunk sizes, so the
    result is the one of the whole track at once; only the crops of one batch (plus 4) and the
    embeddings of the last ``vshift`` + one batch of windows are held (a row of distances is
    final once the audio ``vshift`` windows ahead is embedded): 124 bytes per window kept.
    """

    def __init__(self, model: SyncNet, audio, n_crops: int, sample_rate: int = SAMPLE_RATE,
                 batch_size: int = BATCH_SIZE, vshift: int = VSHIFT, keep_embeddings: bool = False):
        if model.weights_info is None:
            raise WeightsError("SyncNet has no loaded weights; build it with load_syncnet() "
                               "(a randomly initialised network never scores).")
        self.model, self.batch_size = model, batch_size
        self.cc = torch.from_numpy(audio_mfcc(audio, sample_rate)).float()  # (13, M')
        min_length = min(int(n_crops), len(np.asarray(audio)) // SAMPLES_PER_FRAME)
        self.last = min_length - WINDOW
        if self.last <= 0:
            raise ValueError(f"Expected more than {WINDOW} frames of video and audio. Got {min_length}.")
        self.device = next(model.parameters()).device
        self.pending = np.empty((0, 224, 224, 3), np.uint8)
        self.start = 0  # track row of pending[0]
        self.next = 0   # first window of the next batch
        self.v_out, self.a_out = [], []
        self.vshift, self.keep = vshift, keep_embeddings
        self.v = self.a = None   # embeddings of windows [self.v0, self.next) / [self.a0, self.next)
        self.v0 = self.a0 = 0
        self.dist_rows: list[torch.Tensor] = []

    def push(self, crops) -> None:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (224, 224, 3) or crops.dtype != np.uint8:
            raise ValueError(f"Expected crops uint8 of shape (L, 224, 224, 3). Got {crops.dtype} {crops.shape}.")
        self.pending = np.concatenate([self.pending, crops]) if len(self.pending) else crops
        while self.next < self.last:
            stop = min(self.last, self.next + self.batch_size)
            if self.start + len(self.pending) < stop - 1 + WINDOW:
                return
            self._batch(range(self.next, stop))
            self.next = stop
            self.pending = self.pending[stop - self.start:]
            self.start = stop

    def _batch(self, js: range) -> None:
        lo = js[0] - self.start
        part = self.pending[lo:lo + len(js) - 1 + WINDOW]
        vid = torch.from_numpy(np.ascontiguousarray(part[..., ::-1].transpose(3, 0, 1, 2))).float()  # (3, L, H, W) BGR
        cc = self.cc
        with torch.no_grad():
            v = torch.cat([self.model.forward_lip(torch.stack([vid[:, j - js[0]:j - js[0] + WINDOW] for j in sub])
                                                  .to(self.device)).cpu()
                           for sub in (js[k:k + LIP_SUB_BATCH] for k in range(0, len(js), LIP_SUB_BATCH))])
            au = torch.stack([cc[None, :, j * MFCC_PER_FRAME:j * MFCC_PER_FRAME + 20] for j in js]).to(self.device)
            a = self.model.forward_aud(au).cpu()
        if self.keep:
            self.v_out.append(v)
            self.a_out.append(a)
            return
        self.v = v if self.v is None else torch.cat([self.v, v])
        self.a = a if self.a is None else torch.cat([self.a, a])
        self._distances(js[-1] + 1 - self.vshift)

    def _distances(self, upto: int) -> None:
        """Rows [v0, upto) of the distances: audio windows i − vshift … i + vshift, zero outside
        [0, N) as ``calc_pdist``'s padding."""
        lo, vs = self.v0, self.vshift
        if upto <= lo:
            return
        n_a = self.a0 + len(self.a)
        want = torch.arange(lo - vs, upto + vs)
        inside = (want >= 0) & (want < n_a)
        seg = torch.zeros((len(want), self.a.shape[1]), dtype=self.a.dtype)
        seg[inside] = self.a[want[inside] - self.a0]
        idx = torch.arange(upto - lo)[:, None] + torch.arange(2 * vs + 1)[None, :]
        v = self.v[: upto - lo]
        self.dist_rows.append(F.pairwise_distance(v[:, None, :].expand(-1, 2 * vs + 1, -1), seg[idx]))
        self.v, self.v0 = self.v[upto - lo:], upto
        keep_from = max(0, upto - vs)
        self.a, self.a0 = self.a[keep_from - self.a0:], keep_from

    def finish(self):
        if self.next < self.last:
            raise ValueError(f"Expected crops for {self.last + WINDOW - 1} frames. Got {self.start + len(self.pending)}.")
        self.pending = self.pending[:0]
        if self.keep:
            return torch.cat(self.v_out), torch.cat(self.a_out)
        self._distances(self.last)
        return torch.cat(self.dist_rows)


def sync_embeddings(model: SyncNet, crops, audio, sample_rate: int = SAMPLE_RATE,
                    batch_size: int = BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio embeddings of one track's windows.

    crops: (L, 224, 224, 3) uint8 **RGB**; audio: (M,) 16 kHz aligned with the crops' first
    frame. Returns two (N, 1024) float32 tensors, N = min(L, floor(M / 640)) − 5.
    """
    crops = np.asarray(crops)
    emb = WindowEmbedder(model, audio, len(crops), sample_rate, batch_size, keep_embeddings=True)
    emb.push(crops)
    return emb.finish()


#: ``status`` of a Sync result: scored, or why not
SYNC_STATUSES = ("scored", "too_short_for_sync", "no_face_track")


class SyncStream:
    """Sync-C/D of a full-frame 25 fps clip, fed its frames chunk by chunk (bounded memory).

    boxes: per frame (K_t, 4) face boxes [x1, y1, x2, y2] of the whole clip (small; from a first
    pass); audio: (M,) 16 kHz mono from the clip's start. ``push(start, frames)`` takes frames
    ``start…`` (T', H, W, 3) uint8 RGB in order; ``finish()`` returns :func:`evaluate_sync`'s dict.
    Only per-track embeddings and one batch of crops are kept, never frames.
    """

    def __init__(self, model: SyncNet, boxes, audio, sample_rate: int = SAMPLE_RATE,
                 config: TrackConfig = TrackConfig(), vshift: int = VSHIFT):
        if model.weights_info is None:
            raise WeightsError("SyncNet has no loaded weights; build it with load_syncnet().")
        self.model, self.config, self.vshift, self.sample_rate = model, config, vshift, sample_rate
        self.n_frames = len(boxes)
        self.meta = {**model.weights_info, "vshift": vshift, "track_config": dataclasses.asdict(config)}
        self.tracks, self.dropped = shot_tracks(boxes, config)
        self.dets = [smooth_track(tr, config) for tr in self.tracks]
        self.embedders, self.errors = [], []
        for tr in self.tracks:
            try:
                self.embedders.append(WindowEmbedder(model, track_audio(audio, tr, sample_rate, config.frame_rate),
                                                     len(tr["frame"]), sample_rate, vshift=vshift))
            except ValueError as e:  # audio shorter than one window
                self.embedders.append(None)
                self.errors.append(str(e))

    def push(self, start: int, frames) -> None:
        frames = np.asarray(frames)
        stop = start + len(frames)
        for tr, dets, emb in zip(self.tracks, self.dets, self.embedders):
            if emb is None:
                continue
            first = int(tr["frame"][0])
            lo, hi = max(start, first), min(stop, int(tr["frame"][-1]) + 1)
            if lo < hi:
                emb.push(crop_frames(frames[lo - start:hi - start], dets, range(lo - first, hi - first), self.config))

    def finish(self) -> dict:
        results = []
        for tr, emb in zip(self.tracks, self.embedders):
            if emb is None:
                continue
            r = scores_from_dists(emb.finish(), self.vshift)
            r["frames"] = (int(tr["frame"][0]), int(tr["frame"][-1]) + 1)
            results.append(r)
        if not results:
            short = any(d["reason"] == "short" for d in self.dropped) or bool(self.errors)
            status = "too_short_for_sync" if short else "no_face_track"
            why = (f"no face track longer than {self.config.min_track} frames (tracks of "
                   f"{sorted(d['n_boxes'] for d in self.dropped if d['reason'] == 'short')} boxes dropped, "
                   f"clip {self.n_frames} frames)" if short else
                   f"no face track with faces over {self.config.min_face_size} px")
            return {"missing": True, "status": status, "reason": "; ".join([why] + self.errors[:1]),
                    "tracks": [], "dropped": self.dropped, **self.meta}
        w = np.array([r["n_windows"] for r in results], dtype=np.float64)
        return {"missing": False, "status": "scored",
                "sync_c": float(np.dot(w, [r["sync_c"] for r in results]) / w.sum()),
                "sync_d": float(np.dot(w, [r["sync_d"] for r in results]) / w.sum()),
                "offset": results[int(np.argmax(w))]["offset"], "n_windows": int(w.sum()),
                "tracks": results, "dropped": self.dropped, **self.meta}


def evaluate_sync(model: SyncNet, frames, boxes, audio, sample_rate: int = SAMPLE_RATE,
                  config: TrackConfig = TrackConfig(), vshift: int = VSHIFT) -> dict:
    """Sync-C/D of a full-frame 25 fps clip held in memory (:class:`SyncStream` in one chunk).

    frames: (T, H, W, 3) uint8 RGB (the pasted-back video, never 192 crops); boxes: per frame
    (K_t, 4) face boxes [x1, y1, x2, y2]; audio: (M,) 16 kHz mono from the clip's start.
    Each track is scored; the clip's ``sync_c``/``sync_d`` are the window-weighted means over
    tracks and ``offset`` that of the longest track. No track -> ``{'missing': True, 'status':
    'too_short_for_sync' | 'no_face_track', ...}``: tracks of ``min_track`` frames or fewer are
    dropped as officially.
    """
    frames = np.asarray(frames)
    if len(boxes) != len(frames):
        raise ValueError(f"Expected one box list per frame ({len(frames)}). Got {len(boxes)}.")
    stream = SyncStream(model, boxes, audio, sample_rate, config, vshift)
    stream.push(0, frames)
    return stream.finish()
