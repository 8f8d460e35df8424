"""Single-clip dubbing: a video + new speech -> the video with its lower face re-synthesised.

    pass 1: decode (at the output rate) -> track main face -> smoothed FFHQ affines per frame
    refs:   K reference frames: the first face frame (§4.1) + frames far apart in pose
    pass 2: decode again -> warp 192² crops -> RADIO (T=1, K references batched together)
            -> paste back with the inverse affine through a feathered lower-face mask
            -> ffmpeg (H.264, and the given speech: stream copy, or AAC at 128 kb/s a channel)

Pass 2 is a pipeline of threads joined by bounded queues, so decoding + warping, the model and
paste-back + encoding overlap (the model runs in the calling thread; paste-back of a batch is
spread over ``DubConfig.threads`` threads, OpenCV releasing the GIL). Memory stays flat in video
length: frames stream from the decoder into the encoder.

Output rules (SPEC "Dubbing output"):

- **Anamorphic sources** (sample aspect ratio != 1): faces are tracked on square-pixel frames,
  as preprocess decodes them (the model sees faces of their true shape); the crops are warped
  from, and pasted back into, the stored frames through the affine composed with the
  square-pixel map (``to_stored``), and the output keeps the stored size and the source's sample
  aspect ratio (it displays as the source does).
- **Frame rate and size.** The output has the source's resolution and frame rate (a VFR source
  becomes CFR at its average rate; ``fps`` > 0 forces a rate). Output frame k at time
  t_k = k / fps takes the 20 mel rows starting at row round(100·t_k) − 8 (half up), edge-padded;
  at 25 fps that is frame k's window [4k − 8, 4k + 12) of training.
- **Length** (``length``): ``"speech"`` (default) — the output lasts as long as the speech and
  the video loops when the speech is longer (as Wav2Lip); ``"video"`` — the output lasts as long
  as the video, the speech cut or padded with silence.
- **Speech.** The model sees the 16 kHz mono mel; the output carries the given speech at its own
  sample rate and channels: stream-copied when MP4 holds its codec (AAC, MP3, ALAC, AC-3, Opus)
  and no padding is needed, else AAC at ``audio_kbps_per_channel`` (default 128 kb/s a channel,
  transparent for speech). Speech from another file starts at that file's start; the video's own
  speech (the same file: a re-dub, scored against the original) starts at the video's frame 0, as
  preprocess pairs them: a video starting after its audio (an MPEG-TS cut mid-GOP, an MKV whose video
  starts late) has the audio before its first frame cut, sample-exact (so re-encoded, not copied).

Frames without a tracked face pass through unchanged.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import queue
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch

from preprocess import align, audio, failures, media, progress, video, writer
from preprocess import uri as uri_mod
from preprocess.config import ConfigError, check_min, to_dict

log = logging.getLogger(__name__)

LENGTHS = ("speech", "video")
PRECISIONS = ("auto", "fp32", "bf16")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
CRF_RANGE = (0, 51)  # libx264, 8-bit
COPY_CODECS = frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus"})  # MP4 holds these as they are
#: ... at these rates and up: ffmpeg's MP4 muxer refuses MP3 below 16 kHz (MPEG-2.5: 8/11.025/12 kHz telephony)
COPY_MIN_RATE = {"mp3": 16000}
#: sample rates ffmpeg's AAC encoder takes (others, e.g. 192 kHz, fail: the nearest of these is used)
#: how far a decoder's samples may run past the declared stream length (AAC priming/padding: ~2 frames)
CODEC_PADDING_S = 0.1
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


class DubError(RuntimeError):
    """A pair that cannot be dubbed; ``stage``/``reason`` as in preprocess rejects."""

    def __init__(self, stage: str, reason: str, message: str):
        super().__init__(message)
        self.stage, self.reason = stage, reason

    def __reduce__(self):
        return (DubError, (self.stage, self.reason, str(self)))


@dataclass
class DubConfig:
    # what the output looks like (part of each output's identity, see OUTPUT_FIELDS)
    crop_size: int = align.CROP_SIZE
    smooth_window: int = 5
    crf: int = 18
    x264_preset: str = "medium"    # libx264 speed/size trade-off (ultrafast … veryslow)
    mask_feather: float = 0.04     # Gaussian feather of the lower-face mask, in crop sides
    tracker: dict = field(default_factory=dict)
    landmark_backend: str = "dlib"
    landmark_args: dict = field(default_factory=dict)
    length: str = "speech"         # speech: the video loops to the speech | video: speech cut/padded
    fps: float = 0.0               # output frame rate; 0 = the source's (VFR: its average)
    references: int = 1            # reference frames per pair (first face frame + pose-spread ones)
    audio_kbps_per_channel: int = 128
    precision: str = "auto"        # auto: bf16 on GPU, fp32 on CPU | fp32 | bf16
    # how fast (not part of the identity)
    batch_size: int = 16           # frames per model call (× references)
    chunk: int = 32                # decoded frames per block
    queue_batches: int = 4         # batches in flight between the threads
    threads: int = 0               # paste-back threads; 0 = the worker's cores

    def __post_init__(self):
        if self.length not in LENGTHS:
            raise ConfigError(f"Expected dub.length in {LENGTHS}. Got {self.length!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"Expected dub.precision in {PRECISIONS}. Got {self.precision!r}.")
        if self.references < 1 or self.batch_size < 1 or self.queue_batches < 1:
            raise ConfigError("Expected dub.references, dub.batch_size and dub.queue_batches >= 1.")
        if self.fps < 0:
            raise ConfigError(f"Expected dub.fps >= 0 (0 = the source's rate). Got {self.fps}.")
        if self.x264_preset not in X264_PRESETS:
            raise ConfigError(f"Expected dub.x264_preset in {X264_PRESETS}. Got {self.x264_preset!r}.")
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not CRF_RANGE[0] <= self.crf <= CRF_RANGE[1]:
            raise ConfigError(f"Expected dub.crf an integer in {CRF_RANGE[0]}..{CRF_RANGE[1]}. Got {self.crf!r}.")
        # a job that started with chunk 0 failed on every pair ('Expected chunk >= 1'), exit 1
        check_min(self, chunk=1, threads=0, crop_size=32, smooth_window=1, mask_feather=0.0, audio_kbps_per_channel=8)


SPEED_FIELDS = ("batch_size", "chunk", "queue_batches", "threads")


def output_config(cfg: DubConfig) -> dict:
    """The settings an output depends on (an output's identity, with the checkpoint's sha256)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in SPEED_FIELDS}


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


class _Timer:
    """Busy seconds per stage, from several threads."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, secs: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + secs

    def timed(self, stage: str, it: Iterable):
        """``it``, with the time spent producing each item added to ``stage``."""
        it = iter(it)
        while True:
            t0 = time.perf_counter()
            try:
                x = next(it)
            except StopIteration:
                return
            finally:
                self.add(stage, time.perf_counter() - t0)
            yield x


_DONE = object()


def background(it: Iterable, maxsize: int) -> Iterator:
    """Iterate ``it`` in a thread, at most ``maxsize`` items ahead; its exceptions re-raise here.

    Closing the returned generator stops the thread at its next item."""
    q: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for x in it:
                if not put((True, x)):
                    return
        except BaseException as e:  # handed to the consumer, which re-raises it
            put((False, e))
            return
        finally:
            if hasattr(it, "close"):
                it.close()  # an upstream stage stops with this one
        put((True, _DONE))

    t = threading.Thread(target=work, daemon=True, name="radio-dub-stage")
    t.start()
    try:
        while True:
            ok, x = q.get()
            if not ok:
                raise x
            if x is _DONE:
                return
            yield x
    finally:
        stop.set()
        t.join()


def output_rate(info: media.MediaInfo, fps: float = 0.0) -> Fraction:
    """Output frame rate: ``fps`` when > 0, else the source's (CFR: r_frame_rate; VFR: average)."""
    if fps > 0:
        return Fraction(fps).limit_denominator(1001)
    for s in ((info.avg_frame_rate,) if info.is_vfr else (info.r_frame_rate, info.avg_frame_rate)):
        try:
            r = Fraction(s)
        except (ValueError, ZeroDivisionError):
            continue
        if 0 < r <= 240:
            return r
    if info.fps > 0:
        return Fraction(info.fps).limit_denominator(1001)
    raise DubError("probe", "no_frame_rate", "the video has no usable frame rate")


def mel_window_starts(n_frames: int, fps: Fraction) -> np.ndarray:
    """First mel row of each output frame's window: round(100·k/fps) − 8, half up (exact)."""
    k = np.arange(n_frames, dtype=np.int64)
    num, den = fps.numerator, fps.denominator
    return (200 * k * den + num) // (2 * num) - 8  # floor(100·k·den/num + 1/2)


def speech_length(decoded_s: float, declared_s: float | None) -> float:
    """Seconds of speech. The decoder's samples run past the stream's declared length by the codec's
    padding (AAC: tens of ms), which made the video a frame longer than the speech it carries; a
    declared length further off (estimated from a bitrate, bogus) is not trusted: the samples are."""
    if declared_s and 0.0 < decoded_s - declared_s <= CODEC_PADDING_S:
        return declared_s
    return decoded_s


def pad_with_silence(wav: np.ndarray, seconds: float) -> np.ndarray:
    """``wav`` (16 kHz) with zeros appended up to ``seconds`` plus one mel window (0.2 s), so that
    every output frame's window lies in it; unchanged when it is already that long."""
    window_s = (audio.WINDOW_ROWS[1] - audio.WINDOW_ROWS[0]) / 100
    need = int(math.ceil((seconds + window_s) * audio.SAMPLE_RATE))
    return wav if len(wav) >= need else np.concatenate([wav, np.zeros(need - len(wav), wav.dtype)])


def mel_windows_at(mel: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(k,) first rows -> (k, 20, 80) windows, rows clamped to the clip (edge padding)."""
    n = audio.WINDOW_ROWS[1] - audio.WINDOW_ROWS[0]
    rows = np.asarray(starts, np.int64)[:, None] + np.arange(n)[None, :]
    return mel[np.clip(rows, 0, len(mel) - 1)]


class TrackStream:
    """Pass 1 in its own thread: the face track of a video, readable while it is being made.

    Segments come out of the tracker in order (one main face), so after a segment ending at
    frame e is out, every frame < e is known: in a segment (affine + crop landmarks) or without a
    face. ``get(i)`` waits until frame i is known; pass 2 runs right behind the tracker."""

    def __init__(self, path: str, info, backend, cfg: DubConfig, fps=25, timer: _Timer | None = None):
        self.path, self.info, self.backend, self.cfg, self.fps = path, info, backend, cfg, fps
        self.timer = timer or _Timer()
        self.tracks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.known = 0           # frames < known are final
        self.done = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="radio-dub-track")

    def start(self) -> "TrackStream":
        self._thread.start()
        return self

    def _frames(self):
        for block in video.iter_frames(self.path, info=self.info, fps=self.fps, chunk=self.cfg.chunk):
            if self._stop.is_set():
                return
            yield block

    def _run(self):
        from preprocess import track

        try:
            tcfg = track.tracker_config(self.cfg.tracker, min_segment_frames=1)
            waited = _Timer()
            frames = waited.timed("wait", background(self.timer.timed("decode", self._frames()), 2))
            t0 = time.perf_counter()
            for seg in track.track_faces(frames, self.backend, tcfg):
                affines = align.segment_affines(seg.landmarks, self.cfg.smooth_window, size=self.cfg.crop_size)
                new = {seg.start + i: (a, align.apply_affine(a, seg.landmarks[i]).astype(np.float32))
                       for i, a in enumerate(affines.astype(np.float64))}
                with self._cond:
                    self.tracks.update(new)
                    self.known = seg.start + len(new)
                    self._cond.notify_all()
            self.timer.add("track", time.perf_counter() - t0 - waited.seconds.get("wait", 0.0))
        except BaseException as e:  # re-raised in the reading thread
            self.error = e
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def _wait(self, ready) -> None:
        with self._cond:
            while not (ready() or self.done):
                self._cond.wait(0.5)
        if self.error is not None:
            raise self.error

    def get(self, i: int):
        """(affine, crop landmarks) of frame i, or None without a face there."""
        self._wait(lambda: self.known > i)
        return self.tracks.get(i)

    def first(self) -> int | None:
        """The first face frame (None: no face in the whole video)."""
        self._wait(lambda: bool(self.tracks))
        return min(self.tracks) if self.tracks else None

    def all(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        self._wait(lambda: False)
        return self.tracks

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def track_affines(path: str, info, backend, cfg: DubConfig, fps=25,
                  timer: _Timer | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Pass 1 whole: {frame index: (affine (2,3), crop landmarks (68,2))} for frames with a
    tracked face, frames counted at ``fps``."""
    stream = TrackStream(path, info, backend, cfg, fps, timer).start()
    try:
        return stream.all()
    finally:
        stream.stop()


def choose_references(tracks: dict[int, tuple[np.ndarray, np.ndarray]], k: int) -> list[int]:
    """``k`` reference frame indexes spread over the video's poses: the first face frame, then
    greedily the tracked frame farthest (mean landmark distance in the aligned crop, where head
    yaw/pitch and expression remain after alignment) from those chosen. Deterministic; the first
    j of k are the choice for j (ties: the earliest frame). Fewer frames than k: repeats."""
    idx = np.array(sorted(tracks))
    pts = np.stack([tracks[i][1] for i in idx]).reshape(len(idx), -1, 2)
    chosen = [0]
    dist = np.full(len(idx), np.inf)
    while len(chosen) < k:
        d = np.linalg.norm(pts - pts[chosen[-1]], axis=-1).mean(-1)
        dist = np.minimum(dist, d)
        nxt = int(np.argmax(dist))
        chosen.append(nxt if dist[nxt] > 0 else 0)
    return [int(idx[c]) for c in chosen]


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


def _looped_frames(path: str, info, n_out: int, chunk: int, fps) -> Iterator[tuple[int, np.ndarray]]:
    """(output index, frame) for n_out frames at ``fps``, looping the video when it is shorter.
    Frames on the stored pixel grid (the output's: an anamorphic source keeps its pixels; see
    ``to_stored``)."""
    k = 0
    while k < n_out:
        produced = 0
        for block in video.iter_frames(path, info=info, fps=fps, chunk=chunk, square_pixels=False):
            for frame in block:
                if k >= n_out:
                    return
                yield k, frame
                k += 1
                produced += 1
        if produced == 0:
            raise DubError("decode", "no_frames", "the video decoded to no frames")


def audio_plan(speech: media.MediaInfo, cfg: DubConfig, out_seconds: float, speech_seconds: float,
               seek_s: float = 0.0) -> dict:
    """How the speech goes into the output: ffmpeg output arguments and what the summary says.

    Stream copy when MP4 holds the codec (MP3 from 16 kHz) and nothing needs padding; else AAC at the
    speech's own rate (the nearest rate AAC has when it has not that one: 192 kHz -> 96 kHz) and channels,
    ``audio_kbps_per_channel`` each; ``audio_rate`` is the rate the output has. ``length='video'`` cuts the speech to the
    video (``-t``) or pads it with silence (``apad``). ``seek_s`` > 0: the speech starts that far into its
    file (ffmpeg's input ``-ss``: sample-exact when decoded, so never a stream copy, which starts at a packet)."""
    channels, rate = speech.audio_channels or 1, speech.audio_rate
    pad = cfg.length == "video" and speech_seconds < out_seconds
    copyable = speech.audio_codec in COPY_CODECS and (rate or 0) >= COPY_MIN_RATE.get(speech.audio_codec, 0) \
        and seek_s <= 0
    if copyable and not pad:
        args, how = ["-c:a", "copy"], "copy"
    else:
        kbps = cfg.audio_kbps_per_channel * channels
        args, how = ["-c:a", "aac", "-b:a", f"{kbps}k"], f"aac {kbps}k"
        if rate:
            rate = aac_rate(rate)
            args += ["-ar", str(rate)]
        if pad:
            args += ["-af", "apad"]
    if cfg.length == "video":
        args += ["-t", f"{float(out_seconds):.6f}"]
    return {"args": args, "audio": how, "audio_rate": rate, "audio_channels": channels,
            "audio_codec": speech.audio_codec, "audio_seek_s": max(0.0, seek_s)}


def aac_rate(rate: int) -> int:
    """The AAC sample rate nearest to ``rate`` (the higher one on a tie)."""
    return min(AAC_RATES, key=lambda r: (abs(r - rate), -r))


def output_pix_fmt(w: int, h: int) -> str:
    """yuv420p (what every player decodes) when the size allows it; an odd width or height cannot be
    4:2:0, so it is kept exactly in yuv444p (High 4:4:4) rather than padded with a black row/column:
    the output has the source's size, as evaluation against the source needs."""
    return "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"


#: ffmpeg's RGB -> YUV matrices by a stream's stated ``color_space``
_OUT_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "smpte240m": "smpte240m", "fcc": "fcc",
               "bt2020nc": "bt2020"}


def output_colour(info: media.MediaInfo) -> tuple[str, list[str]]:
    """The encoder's RGB -> YUV matrix (ffmpeg's ``scale`` name) and the colour the output states,
    so that a player shows the output's untouched pixels as it shows the source's.

    The frames are RGB as the decoder read them: through the source's stated matrix, BT.601 where it
    states none (swscale's default), and SDR BT.709 for HDR/BT.2020 sources (``video.sdr_filters``).
    The output was written through BT.601 and stated nothing; a player takes an unstated HD picture
    for BT.709, so a BT.709 source's dub showed shifted colours (2.4 grey levels on the bundled face,
    more on saturated ones). Now a source that states its colour is written through its own matrix and
    states the same; HDR/BT.2020 is written and stated as BT.709; an unstated one stays as it was."""
    if info.wide_colour:
        return "bt709", ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
                         "-color_range", "tv"]
    matrix = _OUT_MATRIX.get(info.color_space or "")
    if matrix is None:
        return "bt601", []
    tags = ["-colorspace", info.color_space, "-color_range", "tv"]
    if info.color_primaries:
        tags += ["-color_primaries", info.color_primaries]
    if info.color_transfer:
        tags += ["-color_trc", info.color_transfer]
    return matrix, tags


class _Encoder:
    """ffmpeg: raw RGB frames on stdin + the speech file -> H.264 + speech mp4 (list args, no shell)."""

    def __init__(self, dst: str, w: int, h: int, audio_path: str, audio_index: int, crf: int, preset: str,
                 fps: Fraction, audio_args: list[str], comment: str = "", sar: Fraction | None = None,
                 audio_seek_s: float = 0.0, colour: tuple[str, list[str]] = ("bt601", [])):
        matrix, tags = colour   # output_colour(info)
        vf = [f"scale=out_color_matrix={matrix}:out_range=tv"]
        if sar:  # setsar reduces the ratio to terms of at most ``max`` (default 100: 221:223 became 99:100)
            vf.append(f"setsar={sar.numerator}/{sar.denominator}:max={max(sar.numerator, sar.denominator)}")
        cmd = [media.ffmpeg_bin("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
               *(["-ss", f"{audio_seek_s:.6f}"] if audio_seek_s > 0 else []),
               *media.cli_input(audio_path), "-map", "0:v:0", "-map", f"1:{audio_index}",
               "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", output_pix_fmt(w, h),
               "-vf", ",".join(vf), *tags, *audio_args, "-metadata", f"comment={comment}",
               "-movflags", "+faststart", "file:" + os.path.abspath(dst)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self._err: list[bytes] = []
        self._reader = threading.Thread(target=lambda: self._err.append(self.proc.stderr.read()), daemon=True)
        self._reader.start()  # drain stderr so ffmpeg never blocks on it

    def write(self, frame: np.ndarray) -> None:
        try:
            self.proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            self.close()  # raises with ffmpeg's message
            raise
        progress.frames(1)  # the progress bar's frames while a long pair is dubbed

    def close(self) -> None:
        if not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        rc = self.proc.wait()
        self._reader.join()
        if rc != 0:
            raise encoder_failure(rc, b"".join(self._err).decode(errors="replace"))


_ENV_TEXT = ((errno.ENOSPC, "No space left on device"), (errno.EDQUOT, "Disk quota exceeded"),
             (errno.EIO, "Input/output error"), (errno.EROFS, "Read-only file system"),
             (errno.ENOMEM, "Cannot allocate memory"))


def encoder_failure(rc: int, err: str) -> Exception:
    """What a failed encoder says about the pair. Killed by a signal (the OOM killer, a shutting-down
    machine) or out of disk / I/O: the machine's fault, an environment failure (raised, retried, never a
    reject). Anything else: the pair's (``DubError`` 'ffmpeg_failed')."""
    if rc < 0:
        return failures.EnvironmentFailure(f"the encoder (ffmpeg) was killed by signal {-rc} (out of memory?)")
    for code, text in _ENV_TEXT:
        if text.lower() in err.lower():
            return OSError(code, f"the encoder (ffmpeg) failed: {err.strip()[-300:]}")
    return DubError("encode", "ffmpeg_failed", f"ffmpeg failed: {err[-1000:]}")


def _autocast(device, precision: str):
    dev = torch.device(device)
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)


def to_stored(affine: np.ndarray, info) -> np.ndarray:
    """A source→crop affine of the tracked (square-pixel) frames as one of the stored frames.

    Pass 1 tracks faces on square-pixel frames (as preprocess: an anamorphic face has its true
    shape there, as in training); pass 2 warps and pastes back on the stored pixel grid, so the
    output keeps the source's resolution and every pixel outside the face is the source's.
    Identity for square-pixel sources."""
    m = np.vstack([video.square_pixel_map(info), [0.0, 0.0, 1.0]])
    return np.asarray(affine, np.float64) @ m


def _grab_references(path: str, info, tracks: dict, refs: list[int], cfg: DubConfig, fps) -> np.ndarray:
    """(K, S, S, 3) crops of the reference frames (decodes up to the last one)."""
    want, crops = sorted(set(refs)), {}
    for k, frame in _looped_frames(path, info, max(want) + 1, cfg.chunk, fps):
        if k in want:
            crops[k] = align.warp_face(frame, to_stored(tracks[k][0], info), cfg.crop_size)
    return np.stack([crops[r] for r in refs])


@torch.no_grad()
def dub_clip(video_path: str, audio_path: str, out_paths: str | list[str], model, backend, cfg: DubConfig,
             device: str | torch.device = "cpu", comment: str = "", limits=None) -> dict:
    """Dub one local video with one local speech file into local .mp4 file(s): one per reference
    (``cfg.references``; reference 0 is the first face frame). ``model``: a RADIO generator in
    eval mode on ``device`` (anything with ``model(target, reference, mel)`` and
    ``model.cfg.resolution``). ``comment`` goes into each output's metadata. ``limits`` (a
    ``preprocess.source.LimitsConfig``: ``max_pixels``, ``max_duration_s``) refuses, from the probe and
    before anything is decoded, a video or speech declaring more (reject 'too_large' / 'too_long').
    Returns counts, rates and the busy seconds of each stage."""
    out_paths = [out_paths] if isinstance(out_paths, str) else list(out_paths)
    if len(out_paths) != cfg.references:
        raise ValueError(f"Expected {cfg.references} output paths (dub.references). Got {len(out_paths)}.")
    t0 = time.perf_counter()
    timer = _Timer()
    lim = {} if limits is None else {"max_duration_s": limits.max_duration_s}
    try:
        info = media.validate(media.probe(video_path), need_video=True)
        if limits is not None:
            media.check_limits(info, max_pixels=limits.max_pixels, **lim)
    except media.MediaError as e:
        raise DubError(e.stage, e.reason, str(e)) from e
    # the video's own speech is on the video's timeline (sample 0 at frame 0); another file's at its start
    own = os.path.realpath(video_path) == os.path.realpath(audio_path)
    try:
        speech = info if own else media.probe(audio_path)
        # the speech's own length: duration_s is its video stream's when the file has one (an mp4), and
        # the decoder puts the audio at its start on the file's timeline (silence before it): a 1 s stream
        # starting at 3 h decodes to 3 h of samples (4 GB) and as many frames to dub
        a_s = speech.audio_duration_s or 0.0
        media.check_limits(dataclasses.replace(speech, duration_s=max(speech.duration_s, a_s,
                                                                      speech.audio_start_s + a_s)), **lim)
        # and a header that understates the length (an MP3 whose Xing frame count is off) is caught by
        # decoding no more than the limit allows
        most = None if limits is None else limits.max_duration_s
        wav = audio.load_audio(audio_path, info=speech, align_to_video=own,
                               max_seconds=None if most is None else most + 1.0)
        if most is not None and len(wav) > most * audio.SAMPLE_RATE:
            raise media.MediaError("probe", "too_long", f"Expected at most {most:g} s. Got more "
                                   f"(decoded; the header says {max(speech.duration_s, a_s):.1f} s).", audio_path)
    except media.MediaError as e:
        raise DubError("audio", e.reason, str(e)) from e
    fps = output_rate(info, cfg.fps)
    # the decoded speech starts at its file's start (own speech: at the first frame): a stream starting
    # 56 ms in ends 56 ms past its length
    seek_s = info.video_start_s if own else 0.0
    speech_s = speech_length(len(wav) / audio.SAMPLE_RATE,
                             speech.audio_duration_s and speech.audio_start_s + speech.audio_duration_s - seek_s)
    n_video = video.frame_count(info, fps)
    n_out = n_video if cfg.length == "video" else int(math.ceil(speech_s * fps - 1e-9))
    progress.expect(n_out)
    if n_out < 1:
        raise DubError("audio", "too_short", "the speech is shorter than one frame")
    if cfg.length == "video":
        # the output's audio is padded with silence past the speech: so is what the model hears (the
        # edge padding of the mel windows would repeat the last speech rows under silent frames)
        wav = pad_with_silence(wav, float(n_out / fps))
    mel = audio.log_mel_blocked(wav)  # one STFT over 30 min of speech peaked at +1.1 GB; blocks: ~30 MB
    timer.add("audio", time.perf_counter() - t0)
    # pass 1 in a thread; pass 2 right behind it (with one reference; K > 1 waits for the whole
    # track, as the references are chosen over all its poses)
    stream = TrackStream(video_path, info, backend, cfg, fps, timer).start()
    try:
        if cfg.references == 1:
            first = stream.first()
            refs = [] if first is None else [first]
        else:
            refs = choose_references(stream.all(), cfg.references) if stream.all() else []
        if not refs:
            raise DubError("faces", "no_face", "no face track in the video")
        t1 = time.perf_counter()
        ref_crops = _grab_references(video_path, info, stream.tracks, refs, cfg, fps)
        timer.add("references", time.perf_counter() - t1)
        res = model.cfg.resolution
        K = len(refs)
        ref_t = _to_model(ref_crops, res, device)                     # (K,3,r,r)
        starts = mel_window_starts(n_out, fps)
        plan = audio_plan(speech, cfg, n_out / fps, speech_s, seek_s)
        anamorphic = abs(info.sar - 1.0) > 1e-6
        sar = Fraction(info.sar).limit_denominator(10000) if anamorphic else None
        encs = [_Encoder(p, info.width, info.height, audio_path, speech.audio_index, cfg.crf, cfg.x264_preset, fps,
                         plan["args"], comment, sar=sar, audio_seek_s=plan["audio_seek_s"],
                         colour=output_colour(info)) for p in out_paths]
        threads = cfg.threads or _worker_cores()
        pool = ThreadPoolExecutor(threads, thread_name_prefix="radio-paste")
        masks_cache: dict = {}

        def batches():
            """(frames, crops or None, (affine, lm) or None) per batch of up to batch_size frames."""
            batch: list = []
            for k, frame in _looped_frames(video_path, info, n_out, cfg.chunk, fps):
                tr = stream.get(k % max(n_video, 1))
                if tr is not None and anamorphic:
                    tr = (to_stored(tr[0], info), tr[1])
                t = time.perf_counter()
                item = (k, frame, align.warp_face(frame, tr[0], cfg.crop_size), tr) if tr else (k, frame, None, None)
                timer.add("warp", time.perf_counter() - t)
                batch.append(item)
                if len(batch) >= cfg.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

        def infer(batch):
            faces = [b for b in batch if b[2] is not None]
            gens = None
            if faces:
                t = time.perf_counter()
                target = _to_model(np.stack([b[2] for b in faces]), res, device)
                n = len(faces)
                win = mel_windows_at(mel, starts[[b[0] for b in faces]])
                win = torch.from_numpy(audio.model_input(win)).float().to(device)
                with _autocast(device, cfg.precision):  # all K references in one call: (K·n, ...)
                    out = model(target.repeat(K, 1, 1, 1), ref_t.repeat_interleave(n, 0), win.repeat(K, 1, 1))
                gens = _from_model(out, cfg.crop_size).reshape(K, n, cfg.crop_size, cfg.crop_size, 3)
                timer.add("model", time.perf_counter() - t)
            return batch, gens

        def paste_one(args):
            frame, gen, (affine, lm) = args
            key = lm.tobytes()
            mask = masks_cache.get(key)
            if mask is None:
                mask = masks_cache[key] = lower_face_mask(lm, cfg.crop_size, cfg.mask_feather)
            return paste_back(frame, gen, mask, affine)

        def paste_and_write(batch, gens):
            t = time.perf_counter()
            faces = [b for b in batch if b[2] is not None]
            jobs = [(b[1], gens[r, i], b[3]) for r in range(K) for i, b in enumerate(faces)]
            pasted = list(pool.map(paste_one, jobs))
            timer.add("paste", time.perf_counter() - t)
            t = time.perf_counter()
            for r, enc in enumerate(encs):
                i = 0
                for b in batch:
                    if b[2] is None:
                        enc.write(b[1])
                    else:
                        enc.write(pasted[r * len(faces) + i])
                        i += 1
            timer.add("encode_write", time.perf_counter() - t)
            masks_cache.clear()
            return len(faces)

        n_dubbed = 0
        try:
            # thread 1 decodes + warps, thread 2 runs the model, this thread pastes (pool) + encodes
            inferred = background((infer(b) for b in background(batches(), cfg.queue_batches)), cfg.queue_batches)
            for batch, gens in inferred:
                n_dubbed += paste_and_write(batch, gens)
        finally:
            pool.shutdown()
            errors = []
            for enc in encs:  # every encoder is closed (and waited for), whatever the others say
                try:
                    t = time.perf_counter()
                    enc.close()
                    timer.add("encode_finish", time.perf_counter() - t)
                except Exception as e:  # DubError, or an environment failure (killed, no space)
                    errors.append(e)
        if errors:  # an environment failure of any encoder wins over the pair's own error
            raise next((e for e in errors if not isinstance(e, DubError)), errors[0])
        secs = time.perf_counter() - t0
        return {"frames": n_out, "frames_dubbed": n_dubbed, "video_frames": n_video, "references": refs,
                "source_fps": round(float(info.fps), 3), "source_vfr": bool(info.is_vfr),
                "output_fps": str(fps), "width": info.width, "height": info.height,
                "speech_seconds": round(speech_s, 3),
                **{k: v for k, v in plan.items() if k not in ("args", "audio_seek_s")},
                "seconds": round(secs, 3), "fps": round(n_out / max(secs, 1e-9), 2),
                "seconds_by_stage": {k: round(v, 3) for k, v in sorted(timer.seconds.items())}}
    finally:
        stream.stop()


def dub_uris(video_uri: str, audio_uri: str, out_uris: str | list[str], model, backend, cfg: DubConfig,
             device="cpu", comment: str = "", *, limits=None, schemes=None) -> dict:
    """``dub_clip`` for any fsspec URIs; each output appears atomically under its URI (replacing
    any earlier file whole). ``schemes`` (``input.schemes``) and ``limits.max_source_bytes`` are
    checked before anything is copied (``MediaError`` 'unsupported_scheme' / 'too_large')."""
    out_uris = [out_uris] if isinstance(out_uris, str) else list(out_uris)
    max_bytes = None if limits is None else limits.max_source_bytes
    with contextlib.ExitStack() as stack:
        v = stack.enter_context(uri_mod.local_copy(video_uri, max_bytes=max_bytes, schemes=schemes))
        # the video's own speech: one copy, which dub_clip knows for the video's (its timeline, not its start)
        a = v if audio_uri == video_uri else \
            stack.enter_context(uri_mod.local_copy(audio_uri, max_bytes=max_bytes, schemes=schemes))
        tmp_dir = stack.enter_context(writer.locked_temp_dir(TEMP_PREFIX))
        local = [os.path.join(tmp_dir, f"out{i}.mp4") for i in range(len(out_uris))]
        stats = dub_clip(v, a, local, model, backend, cfg, device, comment, limits)
        for src, dst in zip(local, out_uris):
            with open(src, "rb") as f:
                uri_mod.write_bytes_atomic(dst, f.read())
    return stats


#: local folders of outputs being encoded: ``$TMPDIR/radio-dubout-<uuid>``, each locked by its run
TEMP_PREFIX = "radio-dubout-"


def _worker_cores() -> int:
    """This worker's share of the cores (``RADIO_WORKER_CORES``, set for local multi-process runs by
    ``pipelines.jobrun.worker_threads``), else all of them."""
    try:
        share = int(os.environ.get("RADIO_WORKER_CORES") or 0)
    except ValueError:
        share = 0
    return share if share > 0 else os.cpu_count() or 1
