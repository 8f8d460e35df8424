"""Single-clip dubbing: a video + new speech -> the video with its lower face re-synthesised.

    pass 1: decode (25 fps) -> track main face -> smoothed FFHQ affines per frame (small arrays)
    pass 2: decode again -> warp 192² crops -> RADIO (reference = the first face frame, §4.1;
            T=1) -> paste back with the inverse affine through a feathered lower-face mask
            -> ffmpeg (H.264 + the new audio as AAC)

Two decodes keep memory flat in video length (pass 2 streams frames straight into the
encoder). Frames without a tracked face pass through unchanged. When the speech is longer than
the video, the video loops (as Wav2Lip does); when shorter, the output ends with the speech.
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np
import torch

from preprocess import align, audio, media, progress, video
from preprocess import uri as uri_mod

log = logging.getLogger(__name__)


class DubError(RuntimeError):
    """A pair that cannot be dubbed; ``stage``/``reason`` as in preprocess rejects."""

    def __init__(self, stage: str, reason: str, message: str):
        super().__init__(message)
        self.stage, self.reason = stage, reason

    def __reduce__(self):
        return (DubError, (self.stage, self.reason, str(self)))


@dataclass
class DubConfig:
    batch_size: int = 8
    crop_size: int = align.CROP_SIZE
    smooth_window: int = 5
    chunk: int = 32
    crf: int = 18
    mask_feather: float = 0.04     # Gaussian feather of the lower-face mask, in crop sides
    tracker: dict = field(default_factory=dict)
    landmark_backend: str = "dlib"
    landmark_args: dict = field(default_factory=dict)


def lower_face_mask(crop_landmarks: np.ndarray, size: int, feather: float) -> np.ndarray:
    """Feathered mask (size, size) float32 in [0, 1] covering jaw, mouth and lower nose.

    The hull of jaw points 1–15 and the nose bridge (29): the lower half the model re-renders
    (its input masks rows ≥ S/2). It is eroded so that the feather stays inside the face:
    pasting the whole square would bring the model's weak background along.
    """
    pts = np.concatenate([crop_landmarks[1:16], crop_landmarks[[29]]])
    m = np.zeros((size, size), np.float32)
    cv2.fillConvexPoly(m, cv2.convexHull(np.round(pts).astype(np.int32)), 1.0)
    sigma = max(1.0, feather * size)
    k = int(2 * round(sigma / 2) + 1)
    m = cv2.erode(m, np.ones((k, k), np.uint8))
    return cv2.GaussianBlur(m, (0, 0), sigma)


def paste_back(frame: np.ndarray, crop: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Blend ``crop`` (S,S,3 uint8) into ``frame`` with the inverse of ``affine`` through ``mask``.

    Only the bounding box of the crop's footprint is touched (cheap on 1080p)."""
    h, w = frame.shape[:2]
    s = crop.shape[0]
    inv = align.invert_affine(affine)
    corners = align.apply_affine(inv, np.array([[-0.5, -0.5], [s - 0.5, -0.5], [-0.5, s - 0.5], [s - 0.5, s - 0.5]]))
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return frame
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    m = (shift @ np.vstack([inv, [0, 0, 1]]))[:2]
    size = (x1 - x0, y1 - y0)
    src = cv2.warpAffine(crop, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, m, size, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
    out = frame.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(region * (1 - alpha) + src.astype(np.float32) * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


def track_affines(path: str, info, backend, cfg: DubConfig) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Pass 1: {frame index: (affine (2,3), crop landmarks (68,2))} for frames with a tracked face."""
    from preprocess import track

    tcfg = track.tracker_config(cfg.tracker, min_segment_frames=1)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for seg in track.track_faces(video.iter_frames(path, info=info, chunk=cfg.chunk), backend, tcfg):
        affines = align.segment_affines(seg.landmarks, cfg.smooth_window, size=cfg.crop_size)
        for i, a in enumerate(affines.astype(np.float64)):
            out[seg.start + i] = (a, align.apply_affine(a, seg.landmarks[i]).astype(np.float32))
    return out


def _to_model(crops: np.ndarray, res: int, device) -> torch.Tensor:
    """(N,S,S,3) uint8 -> (N,3,res,res) float in [-1,1]."""
    if crops.shape[1] != res:
        crops = np.stack([cv2.resize(c, (res, res), interpolation=cv2.INTER_AREA) for c in crops])
    t = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


def _from_model(x: torch.Tensor, size: int) -> np.ndarray:
    """(N,3,r,r) in [-1,1] -> (N,size,size,3) uint8."""
    a = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    if a.shape[1] != size:
        a = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in a])
    return a


def _looped_frames(path: str, info, n_out: int, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(output index, frame) for n_out frames, looping the video when it is shorter."""
    k = 0
    while k < n_out:
        produced = 0
        for block in video.iter_frames(path, info=info, chunk=chunk):
            for frame in block:
                if k >= n_out:
                    return
                yield k, frame
                k += 1
                produced += 1
        if produced == 0:
            raise DubError("decode", "no_frames", "the video decoded to no frames")


class _Encoder:
    """ffmpeg: raw RGB frames on stdin + an audio file -> H.264/AAC mp4 (list args, no shell)."""

    def __init__(self, dst: str, w: int, h: int, audio_path: str, crf: int, fps: int = 25):
        cmd = [media.ffmpeg_bin("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
               *media.cli_input(audio_path), "-map", "0:v:0", "-map", "1:a:0",
               "-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p",
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:a", "aac", "-b:a", "128k", "-shortest",
               "-movflags", "+faststart", "file:" + os.path.abspath(dst)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frame: np.ndarray) -> None:
        self.proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        progress.frames(1)  # the progress bar's frames while a long pair is dubbed

    def close(self) -> None:
        self.proc.stdin.close()
        err = self.proc.stderr.read().decode(errors="replace")
        if self.proc.wait() != 0:
            raise DubError("encode", "ffmpeg_failed", f"ffmpeg failed: {err[-1000:]}")


@torch.no_grad()
def dub_clip(video_path: str, audio_path: str, out_path: str, model, backend, cfg: DubConfig,
             device: str | torch.device = "cpu") -> dict:
    """Dub one local video with one local speech file into ``out_path`` (local .mp4).

    ``model``: a RADIO generator in eval mode on ``device``. Returns counts and timings."""
    t0 = time.perf_counter()
    try:
        info = media.validate(media.probe(video_path), need_video=True)
    except media.MediaError as e:
        raise DubError(e.stage, e.reason, str(e)) from e
    try:
        wav = audio.load_audio(audio_path, align_to_video=False)
    except media.MediaError as e:
        raise DubError("audio", e.reason, str(e)) from e
    mel = audio.log_mel(wav)
    n_out = int(np.ceil(len(wav) * 25 / audio.SAMPLE_RATE))
    if n_out < 1:
        raise DubError("audio", "too_short", "the speech is shorter than one frame")
    tracks = track_affines(video_path, info, backend, cfg)
    if not tracks:
        raise DubError("faces", "no_face", "no face track in the video")
    n_video = video.frame_count(info)
    t_track = time.perf_counter() - t0
    res = model.cfg.resolution
    first = min(tracks)
    ref_crop = None
    # speech for the output: 16 kHz wav beside the output (the encoder muxes it, cut to the video)
    tmp_dir = tempfile.mkdtemp(prefix="radio-dub-")
    wav_path = os.path.join(tmp_dir, "speech.wav")
    import soundfile as sf

    sf.write(wav_path, wav, audio.SAMPLE_RATE, subtype="PCM_16")
    enc = _Encoder(out_path, info.width, info.height, wav_path, cfg.crf)
    batch: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    n_dubbed = 0

    def run_batch():
        nonlocal n_dubbed
        if not batch:
            return
        idx = np.array([b[0] for b in batch])
        crops = np.stack([b[2] for b in batch])
        target = _to_model(crops, res, device)
        ref = _to_model(ref_crop[None], res, device).expand_as(target)
        win = torch.from_numpy(audio.model_input(audio.mel_windows(mel, idx))).float().to(device)
        out = _from_model(model(target, ref, win), cfg.crop_size)
        for (k, frame, _crop, affine, lm), gen in zip(batch, out):
            mask = lower_face_mask(lm, cfg.crop_size, cfg.mask_feather)
            enc.write(paste_back(frame, gen, mask, affine))
        n_dubbed += len(batch)
        batch.clear()

    try:
        for k, frame in _looped_frames(video_path, info, n_out, cfg.chunk):
            src = k % max(n_video, 1)
            if ref_crop is None and src == first:
                ref_crop = align.warp_face(frame, tracks[first][0], cfg.crop_size)
            if src in tracks and ref_crop is not None:
                affine, lm = tracks[src]
                batch.append((k, frame, align.warp_face(frame, affine, cfg.crop_size), affine, lm))
                if len(batch) >= cfg.batch_size:
                    run_batch()
            else:
                run_batch()  # keep the output in order
                enc.write(frame)
        run_batch()
    finally:
        enc.close()
        for f in os.listdir(tmp_dir):
            os.unlink(os.path.join(tmp_dir, f))
        os.rmdir(tmp_dir)
    secs = time.perf_counter() - t0
    return {"frames": n_out, "frames_dubbed": n_dubbed, "video_frames": n_video, "seconds": round(secs, 3),
            "seconds_tracking": round(t_track, 3), "fps": round(n_out / max(secs, 1e-9), 2)}


def dub_uris(video_uri: str, audio_uri: str, out_uri: str, model, backend, cfg: DubConfig, device="cpu") -> dict:
    """``dub_clip`` for any fsspec URIs; the output appears atomically under ``out_uri``."""
    with uri_mod.local_copy(video_uri) as v, uri_mod.local_copy(audio_uri) as a:
        tmp_dir = tempfile.mkdtemp(prefix="radio-dubout-")
        try:
            local = os.path.join(tmp_dir, "out.mp4")
            stats = dub_clip(v, a, local, model, backend, cfg, device)
            with open(local, "rb") as f:
                uri_mod.write_bytes_atomic(out_uri, f.read())
        finally:
            for f in os.listdir(tmp_dir):
                os.unlink(os.path.join(tmp_dir, f))
            os.rmdir(tmp_dir)
    return stats
