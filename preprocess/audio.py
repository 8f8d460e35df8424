"""16 kHz mono audio from any media file, and the log-mel features of SPEC "Media conventions".

Timing rules (100 mel rows per second, 25 video frames per second):

- Mel row r is the STFT frame centred on sample 160·r (``center=True``), i.e. audio time r/100 s.
- Video frame i spans [i/25, (i+1)/25) s and owns rows 4i..4i+3 (centres at +0, 10, 20, 30 ms).
- ``align_mel_to_frames`` keeps rows [0, 4N): a longer mel is trimmed at the end, a shorter one
  is padded at the end by repeating its last row (edge padding).
- ``mel_window(mel, i)`` = rows [4i-8, 4i+12) — 20 rows, 0.2 s, the 5 frames i-2..i+2 — with
  row indexes clamped to [0, n_rows-1] (edge padding at both clip ends).

``load_audio`` puts sample 0 at the first video frame (when the file has video), so these rules
hold for files whose audio and video streams start at different times.

Channels: libswresample's standard downmix to mono (what ``ffmpeg -ac 1`` does: stereo is
(L+R)/2; 5.1 keeps the centre, where dialogue is, at full level, the front pair at 0.71 and the
surrounds at 0.5 each, where a plain mean gave the centre 1/6), in every decode path. Channels that cancel in the
downmix (stereo with one channel's polarity inverted: silence) are caught: when the mono has
``CANCEL_DB`` (20 dB) less energy than the louder channel, that channel alone is the audio.
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import threading
import tempfile
import time
from fractions import Fraction
from typing import Optional

import numpy as np

from preprocess import failures
from preprocess.media import (MediaError, MediaInfo, cli_error, cli_input, ffmpeg_bin, open_av,
                              probe, _check_file, _PyAVShort, _stderr_tail, pyav_or_cli)

__all__ = ["SAMPLE_RATE", "MEL_PARAMS", "load_audio", "log_mel", "align_mel_to_frames",
           "mel_window", "mel_windows", "model_input", "ROWS_PER_FRAME", "WINDOW_ROWS"]

SAMPLE_RATE = 16000
ROWS_PER_FRAME = 4
WINDOW_ROWS = (-8, 12)  # frame i's window: rows [4i-8, 4i+12)
AUDIO_TIMEOUT_S = 600.0
AUDIO_BACKENDS = ("auto", "pyav", "ffmpeg")
CANCEL_DB = 20.0  # a downmix this much quieter than its louder channel cancelled: that channel is used

#: Everything that defines the stored mel; written into the Parquet schema metadata.
MEL_PARAMS = {
    "sr": SAMPLE_RATE,
    "preemphasis": 0.97,
    "n_fft": 1280,
    "win_length": 1280,
    "hop_length": 160,
    "window": "hann",
    "center": True,
    "pad_mode": "reflect",
    "n_mels": 80,
    "fmin": 55.0,
    "fmax": 7600.0,
    "htk": False,
    "norm": "slaney",
    "power": 1.0,
    "log": "log10",
    "floor": 1e-5,
    "layout": "time_major",  # (n_rows, n_mels)
    "rows_per_frame": ROWS_PER_FRAME,
    "fps": 25,
    "window_rows": list(WINDOW_ROWS),
    "model_input": "clip(1.6*L+2.4,-4,4)",
}


def load_audio(path, sr: int = SAMPLE_RATE, info: Optional[MediaInfo] = None,
               align_to_video: bool = True, backend: str = "auto",
               max_seconds: Optional[float] = None) -> np.ndarray:
    """Decode the first audio stream to mono float32 ``(n_samples,)`` in [-1, 1] at ``sr`` Hz.

    Any container/rate/channel count ffmpeg reads (wav, mp4, audio-only, ...). Channels are
    downmixed by libswresample (``ffmpeg -ac 1``), or the louder one is taken where they cancel
    (see the module docstring). Timestamp gaps are filled with silence (``aresample`` ``min_comp``/``first_pts``),
    and with ``align_to_video`` sample 0 is the first video frame's time: audio that starts
    before the video is trimmed, audio that starts after it is preceded by silence.
    ``max_seconds`` stops decoding after that much output (None: the whole stream).

    Both backends run the same decode and filter chain (see ``_decode_pyav``): 'pyav' in-process
    (~14 ms for a 7 s 44.1 kHz stereo clip), 'ffmpeg' the CLI (~83 ms, mostly process start);
    'auto' (default) is PyAV, and the CLI wherever PyAV cannot reproduce the CLI's chain
    exactly (see ``_PyAVShort``) or fails.

    Raises:
        MediaError(stage='probe'): from probing (not found, empty, unparseable).
        MediaError(stage='audio'): reason 'no_audio_stream', 'undecodable', 'timeout' or
            'non_finite_samples' (NaN or infinite samples: a float PCM file can hold them).
    """
    sink = _decode(path, sr, info, align_to_video, backend, max_seconds, None)
    return sink.array()


class AudioTrack:
    """A source's decoded audio (mono float32 at 16 kHz) in an unlinked temporary file.

    Memory is what one read asks for, whatever the track's length: ``mel_rows`` gives a
    segment's log-mel rows from that segment's samples (plus STFT context), equal to the rows
    of ``log_mel`` over the whole track. Close it (or use it as a context manager)."""

    def __init__(self, file, n_samples: int, sr: int = SAMPLE_RATE, offset: int = 0):
        # the file holds samples [offset, n_samples) of the track (a clip range's window)
        self.file, self.n_samples, self.sr, self.offset = file, int(n_samples), sr, int(offset)

    def __len__(self) -> int:
        return self.n_samples

    def read(self, a: int, b: int) -> np.ndarray:
        """Samples ``[a, b)`` (clamped to the track). A track holding a window (``offset`` > 0)
        refuses reads before it: they would silently start later than asked."""
        a, b = max(0, a), min(self.n_samples, b)
        if b <= a:
            return np.zeros(0, np.float32)
        if a < self.offset:
            raise ValueError(f"samples from {a} asked of a track holding samples {self.offset}..")
        data = os.pread(self.file.fileno(), 4 * (b - a), 4 * (a - self.offset))
        return np.frombuffer(data, "<f4").astype(np.float32)

    def mel_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``[r0, r1)`` of ``log_mel`` of the whole track, clamped to its rows.

        Computed in blocks of ``MEL_GRID_ROWS`` rows on a fixed grid of the track's rows (the last
        two cached), so a row's float32 value does not depend on which rows were asked for with it:
        the STFT's batches and the mel product round differently by a few 1e-7 with another block
        start or length. A clip range's segments (which start elsewhere than the whole video's)
        get the very rows the whole video's would."""
        hop = MEL_PARAMS["hop_length"]
        n_rows = 1 + self.n_samples // hop
        r0, r1 = max(0, r0), min(n_rows, r1)
        if r1 <= r0:
            return np.zeros((0, MEL_PARAMS["n_mels"]), np.float32)
        g = MEL_GRID_ROWS
        parts = [self._mel_block(j)[max(r0 - j * g, 0): r1 - j * g] for j in range(r0 // g, (r1 - 1) // g + 1)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _mel_block(self, j: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_blocks", {})
        if j not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[j] = log_mel_rows(self.read, self.n_samples, j * MEL_GRID_ROWS, (j + 1) * MEL_GRID_ROWS)
        return cache[j]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "AudioTrack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: ``AudioTrack.mel_rows`` computes rows in blocks of this many (10 s) on a fixed grid
MEL_GRID_ROWS = 1000
#: samples kept on either side of the mel blocks of a clip range's frames (``frames_window``): more
#: than the rows' STFT context (800) and the end-of-track margin of ``log_mel_rows`` (≈ 1,760)
WINDOW_MARGIN = SAMPLE_RATE


def frames_window(first: int, stop: int, fps: int = 25) -> tuple[int, int]:
    """The samples ``[a, b)`` of the 16 kHz track that video frames ``[first, stop)`` need: their
    own (frame k: ``[k·640, (k+1)·640)``, mel rows ``4k..4k+3``), widened to whole blocks of
    ``AudioTrack.mel_rows``' grid and ``WINDOW_MARGIN`` on either side, so that every mel row and
    sample of those frames equals the whole track's. A block reaching within 10 rows of the track's
    end is computed to the end (``log_mel_rows``): the margin puts that end inside the window then."""
    rows, hop, g = SAMPLE_RATE // fps // MEL_PARAMS["hop_length"], MEL_PARAMS["hop_length"], MEL_GRID_ROWS
    r0, r1 = rows * first // g * g, ((rows * stop - 1) // g + 1) * g
    return max(0, r0 * hop - WINDOW_MARGIN), r1 * hop + WINDOW_MARGIN


def decode_audio(path, info: Optional[MediaInfo] = None, backend: str = "auto",
                 max_seconds: Optional[float] = None,
                 window: Optional[tuple[int, int]] = None) -> AudioTrack:
    """``load_audio(path, info=info, ...)`` at 16 kHz, streamed to an :class:`AudioTrack` (a
    temporary file, unlinked from the start so nothing stays behind) instead of memory.

    ``window``: keep only samples ``[a, b)`` of that track (a clip range, ``frames_window``): the
    track's sample numbers stay those of the whole track (``AudioTrack.offset`` = a), and its length
    is where the kept samples end (b, or the stream's end before it). The samples are the whole
    decode's, bit for bit: the same decode and filter chain runs from the stream's start and what
    lies before ``a`` is dropped (not seeked: the resampler's gap compensation, ``min_comp``, and
    the first pts depend on everything before, so a seek would shift or change samples); a mono
    stream stops decoding at ``b``, one of more channels decodes to its end (whether its channels
    cancel in the downmix is decided on the whole stream, as without a window)."""
    f = tempfile.TemporaryFile(prefix="radio-audio-")
    try:
        sink = _decode(path, SAMPLE_RATE, info, True, backend, max_seconds, f, window)
        f.flush()  # reads go through the descriptor (os.pread), past Python's buffer
    except BaseException:
        f.close()
        raise
    if window is None:
        return AudioTrack(f, sink.n)
    return AudioTrack(f, window[0] + sink.kept, offset=window[0])


class _MonoSink:
    """Interleaved float32 blocks of ``channels`` channels, from sample ``skip`` on, at most
    ``limit`` samples. Mono (``channels`` 1) is clipped to [-1, 1] and kept as blocks, or appended
    to ``file``; with more channels nothing is kept but each channel's energy. ``energy``: the sum
    of squares per channel of the samples taken."""

    def __init__(self, channels: int, skip: int, limit: Optional[int], file=None,
                 keep: Optional[tuple[int, int]] = None):
        # keep: only samples [a, b) (counted from ``skip``) go to the blocks/file; the energy and
        # ``n`` count all of them
        self.channels, self.skip, self.limit, self.file, self.keep = channels, skip, limit, file, keep
        self.reset()

    def reset(self) -> None:  # a fallback to the CLI starts over
        self.blocks: list = []
        self.n = self.seen = self.nonfinite = self.kept = 0
        self.energy = np.zeros(self.channels, np.float64)
        self.rest = np.zeros(0, np.float32)
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()

    @property
    def full(self) -> bool:
        return self.limit is not None and self.n >= self.limit

    def __call__(self, raw: np.ndarray) -> None:
        c = self.channels
        if len(self.rest):
            raw = np.concatenate([self.rest, raw])
        whole = len(raw) // c * c
        self.rest = raw[whole:].copy()
        wav = raw[:whole].reshape(-1, c)
        drop = min(len(wav), max(0, self.skip - self.seen))
        self.seen += len(wav)
        wav = wav[drop:]
        if self.limit is not None:
            wav = wav[:max(0, self.limit - self.n)]
        if not len(wav):
            return
        at = self.n   # the first of these samples' number
        self.n += len(wav)
        if c > 1:
            self.energy += np.einsum("ij,ij->j", wav, wav, dtype=np.float64)
            return
        if self.keep is not None:
            lo, hi = max(0, self.keep[0] - at), max(0, min(len(wav), self.keep[1] - at))
            whole = np.clip(wav[:, 0], -1.0, 1.0)
            self.energy[0] += float(np.dot(whole, whole))
            wav = wav[lo:hi]
            self.kept += len(wav)
            if not len(wav):
                return
        bad = int(np.count_nonzero(~np.isfinite(wav)))
        if bad:  # NaN survives the clip (and the mel: NaN rows); a float PCM file can hold them
            self.nonfinite += bad
        wav = np.clip(wav[:, 0], -1.0, 1.0)
        if self.keep is None:
            self.energy[0] += float(np.dot(wav, wav))
        if self.file is not None:
            self.file.write(np.ascontiguousarray(wav, "<f4").tobytes())
        else:
            self.blocks.append(wav)

    def array(self) -> np.ndarray:
        if not self.blocks:
            return np.zeros(0, np.float32)
        return np.ascontiguousarray(np.concatenate(self.blocks), dtype=np.float32)


def _decode(path, sr: int, info: Optional[MediaInfo], align_to_video: bool, backend: str,
            max_seconds: Optional[float], file, window: Optional[tuple[int, int]] = None) -> _MonoSink:
    if backend not in AUDIO_BACKENDS:
        raise ValueError(f"Expected backend in {AUDIO_BACKENDS}. Got {backend!r}.")
    p = _check_file(path, "probe")
    if sr <= 0:
        raise ValueError(f"Expected sr > 0. Got {sr!r}.")
    info = info if info is not None else probe(p)
    if not info.has_audio:
        raise MediaError("audio", "no_audio_stream", "no audio stream", p)
    channels = max(1, info.audio_channels or 1)
    # container time of the first video frame: audio before it is dropped
    skip = int(round(info.video_start_s * sr)) if align_to_video and info.has_video else 0
    limit = None if max_seconds is None else int(math.ceil(max_seconds * sr))

    def run(sink: _MonoSink, pick: Optional[int] = None) -> _MonoSink:
        def cli():
            sink.reset()
            _decode_ffmpeg(p, sr, info, sink.channels, sink, None if sink.limit is None else (skip + sink.limit) / sr,
                           pick=pick)

        pyav_or_cli(backend, "ffmpeg", "audio", p, lambda: _decode_pyav(p, sr, info, sink.channels, sink, pick),
                    cli)
        return sink

    mono_limit = limit
    if window is not None and channels == 1:   # nothing past the window is needed: stop there
        mono_limit = window[1] if limit is None else min(limit, window[1])
    sink = run(_MonoSink(1, skip, mono_limit, file, keep=window))           # libswresample's downmix
    if sink.nonfinite:  # a broken float file (a TTS/vocoder that emitted NaN): its mel would be NaN rows
        raise MediaError("audio", "non_finite_samples",
                         f"{sink.nonfinite} of {sink.n} decoded samples are NaN or infinite", p)
    if channels > 1:
        levels = run(_MonoSink(channels, skip, limit)).energy  # each channel's energy, nothing kept
        loud = int(np.argmax(levels))
        if levels[loud] > 0 and sink.energy[0] < levels[loud] * 10 ** (-CANCEL_DB / 10):
            sink.reset()  # the channels cancel in the downmix (one inverted): the louder one alone
            run(sink, pick=loud)
    return sink


def _filters(sr: int, channels_in: int, pick: Optional[int]) -> list[str]:
    """The filters before the output format: resampling on the input's timeline, and with ``pick``
    that channel alone (of the input in the default layout of its channel count)."""
    out = [f"aresample={sr}:min_comp=0.001:first_pts=0"]
    if pick is not None:
        out += [f"aformat=channel_layouts={channels_in}c", f"pan=mono|c0=c{int(pick)}"]
    return out


def _decode_ffmpeg(p: str, sr: int, info: MediaInfo, channels: int, sink: "_MonoSink",
                   max_seconds: Optional[float] = None, pick: Optional[int] = None) -> None:
    """Interleaved float32 samples of ``channels`` channels (1: libswresample's downmix; with
    ``pick``, that input channel) from the ffmpeg CLI (the reference chain), streamed to ``sink``."""
    channels_in = max(1, info.audio_channels or 1)
    cmd = [ffmpeg_bin("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error",
           *cli_input(p), "-map", f"0:{info.audio_index}", "-vn", "-sn", "-dn",
           "-af", ",".join(_filters(sr, channels_in, pick)), "-ac", str(channels),
           "-ar", str(sr)]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds + 1.0 / sr:.6f}"]
    cmd += ["-c:a", "pcm_f32le", "-f", "f32le", "pipe:1"]
    block = 4 * channels * 65536
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf)
        killed = threading.Event()

        def kill():
            killed.set()
            proc.kill()

        timer = threading.Timer(AUDIO_TIMEOUT_S, kill)
        timer.start()
        got = 0
        try:
            while data := proc.stdout.read(block):
                got += len(data)
                sink(np.frombuffer(data, dtype="<f4", count=len(data) // 4))
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        errf.seek(0)
        err = _stderr_tail(errf.read().decode("utf-8", "replace"))
    if killed.is_set():
        raise MediaError("audio", "timeout", f"ffmpeg ran over {AUDIO_TIMEOUT_S:.0f} s", p)
    failures.raise_if_killed(rc, "ffmpeg")   # the OOM killer, not the file: retried, not a reject
    if rc != 0 or got < 4 * channels:
        raise cli_error("audio", err, p, f"ffmpeg exited with {rc}")


# ----------------------------------------------------------------------------- PyAV decode
_AV_TIME_BASE = 1_000_000
_AVFMT_TS_DISCONT = 0x0200
_MAX_ERROR_RATE = Fraction(2, 3)  # ffmpeg's -max_error_rate default
_PULL_EVERY = 32  # decoded frames queued in the graph between pulls (fewer EAGAIN round trips)


def _rescale(a: int, b: int, c: int, rnd: str = "near") -> int:
    """``av_rescale_rnd(a, b, c)``: a·b/c rounded 'near' (half away from 0), 'down' or 'up'."""
    n = a * b
    if rnd == "down":
        return n // c
    if rnd == "up":
        return -(-n // c)
    q, r = divmod(abs(n), c)
    q += 2 * r >= c
    return q if n >= 0 else -q


class _RescaleDelta:
    """``av_rescale_delta(in_tb, ts, fs_tb, duration, &last, fs_tb)`` with its ``last`` state.

    ffmpeg's CLI maps each decoded audio frame's pts to the filter input's 1/sample_rate time base
    this way: a pts within rounding of where the previous frame ended is snapped to it, so a
    coarse container time base (Matroska's 1 ms) does not jitter the sample positions.
    ``in_tb`` is the stream time base, ``fs_tb`` = out_tb = 1/``rate``.
    """

    def __init__(self, in_tb: Fraction, rate: int) -> None:
        self.num, self.den, self.rate = in_tb.numerator, in_tb.denominator, rate
        self.fine = self.num * rate <= self.den  # in_tb <= 1/rate: plain rounding
        self.last: Optional[int] = None

    def __call__(self, in_ts: int, duration: int) -> int:
        b, c = self.num * self.rate, self.den
        if self.last is not None and duration and not self.fine:
            lo = _rescale(2 * in_ts - 1, b, c, "down") >> 1
            hi = (_rescale(2 * in_ts + 1, b, c, "up") + 1) >> 1
            if 2 * lo - hi <= self.last <= 2 * hi - lo:
                this = min(max(self.last, lo), hi)
                self.last = this + duration
                return this
        out = _rescale(in_ts, b, c)
        self.last = out + duration
        return out


def _decode_pyav(p: str, sr: int, info: MediaInfo, channels: int, emit: "_MonoSink",
                 pick: Optional[int] = None) -> None:
    """Interleaved float32 samples: the CLI's chain, in-process, streamed to ``emit`` (which
    stops the decoding once full). ``channels`` and ``pick`` as ``_decode_ffmpeg``'s.

    What ``ffmpeg -i FILE -map 0:<a> -af aresample={sr}:min_comp=0.001:first_pts=0 -ac C
    -ar {sr} -c:a pcm_f32le -f f32le`` (FFmpeg 5.1's CLI; C = ``channels``; with ``pick`` k,
    ``,aformat=channel_layouts=<in>c,pan=mono|c0=ck`` after aresample) does, step by step:

    - timestamps are shifted by the file's start time (the CLI's default input ``ts_offset``),
      then each decoded frame's pts goes to 1/in_rate with ``av_rescale_delta`` (``_RescaleDelta``,
      reset where a packet's pts jumps past the previous one's duration);
    - ``abuffer`` (time_base=1/in_rate, the first frame's rate/format/layout) →
      ``aresample={sr}:min_comp=0.001:first_pts=0`` (→ the pick) → ``aformat`` (flt, {sr} Hz, the default
      layout of C channels: what ``-ac``/``-ar``/pcm_f32le ask for) → ``abuffersink``;
    - a packet that fails to decode is skipped (the CLI logs it and goes on); the file fails
      when more than 2/3 of the decode calls failed (``-max_error_rate``), and a demux error
      ends the input like EOF.

    Raises:
        MediaError(stage='audio'): 'undecodable' (cannot open, nothing decoded, too many
            errors) or 'timeout'.
        _PyAVShort: a case this path does not reproduce exactly (a format with timestamp
            discontinuities such as MPEG-TS, a frame without pts, rate/format/layout changing
            mid-stream, no PyAV); the CLI handles those.
    """
    try:
        import av
        import av.filter
    except ImportError as e:
        raise _PyAVShort(f"PyAV unavailable: {e}") from e
    deadline = time.monotonic() + AUDIO_TIMEOUT_S
    container = open_av(p, "audio", AUDIO_TIMEOUT_S)
    with container:
        if container.format.flags & _AVFMT_TS_DISCONT:
            raise _PyAVShort(f"format {container.format.name} may carry timestamp discontinuities")
        if info.audio_index is None or not 0 <= info.audio_index < len(container.streams):
            raise _PyAVShort(f"no stream {info.audio_index}")
        stream = container.streams[info.audio_index]
        if stream.type != "audio" or stream.codec_context is None:
            raise _PyAVShort(f"stream {info.audio_index} is not a decodable audio stream")
        for other in container.streams:
            if other.index != stream.index:
                other.discard = av.stream.Discard.all  # the CLI's -map: the demuxer skips the rest
        dec = stream.codec_context
        st_tb = stream.time_base
        start = container.start_time
        # the CLI's input ts_offset (-start_time, in AV_TIME_BASE) in stream ticks (av_rescale_q)
        ts_offset = (_rescale(-start, st_tb.denominator, _AV_TIME_BASE * st_tb.numerator)
                     if start is not None else 0)
        rescale: Optional[_RescaleDelta] = None
        pending = 0
        prev_pkt_pts: Optional[int] = None
        graph = src = sink = None
        params = None
        n_ok = n_err = 0
        last_error = ""

        def feed(frame, pkt_pts: Optional[int], pkt_duration: int, first: bool) -> None:
            nonlocal graph, src, sink, params, prev_pkt_pts, rescale, pending
            if frame.pts is None:
                raise _PyAVShort("decoded frame without pts")
            rate = frame.sample_rate
            layout = frame.layout
            here = (rate, frame.format.name, layout.name, layout.nb_channels)
            if params is None:
                params = here
                graph = av.filter.Graph()
                # the frame's own layout ('mono', '2 channels' when unordered, ...), which the
                # buffer source must match exactly; '<C>c' is av_channel_layout_default(C), -ac's
                src = graph.add("abuffer", f"time_base=1/{rate}:sample_rate={rate}:"
                                           f"sample_fmt={frame.format.name}:"
                                           f"channel_layout={layout.name}")
                chain = [graph.add(*f.split("=", 1)) for f in _filters(sr, layout.nb_channels, pick)]
                out_layout = av.AudioLayout(f"{channels}c").name
                fmt = graph.add("aformat", f"sample_fmts=flt:sample_rates={sr}:"
                                           f"channel_layouts={out_layout}")
                sink = graph.add("abuffersink")
                nodes = [src, *chain, fmt, sink]
                for a, b in zip(nodes, nodes[1:]):
                    a.link_to(b)
                graph.configure()
                rescale = _RescaleDelta(st_tb, rate)
            elif here != params:
                raise _PyAVShort(f"audio parameters change mid-stream: {params} -> {here}")
            if first:  # the CLI checks the packet whose send returned this frame
                if (pkt_duration and prev_pkt_pts is not None and pkt_pts is not None
                        and pkt_pts - prev_pkt_pts > pkt_duration):
                    rescale.last = None
                prev_pkt_pts = pkt_pts
            frame.pts = rescale(frame.pts + ts_offset, frame.samples)
            frame.time_base = Fraction(1, rate)
            src.push(frame)  # queued; the graph runs on pull, in order, so batching is exact
            pending += 1
            if pending >= _PULL_EVERY:
                drain()

        def drain() -> None:
            nonlocal pending
            pending = 0
            while True:
                try:
                    f = sink.pull()
                except (av.error.BlockingIOError, av.error.EOFError):
                    return
                emit(np.frombuffer(f.planes[0], np.float32, f.samples * channels))

        def decode(packet) -> None:
            nonlocal n_ok, n_err, last_error
            pkt_pts = None if packet is None or packet.pts is None else packet.pts + ts_offset
            pkt_duration = 0 if packet is None else packet.duration or 0
            try:
                frames = dec.decode(packet)
            except av.error.FFmpegError as e:  # the CLI: log, count, go on with the next packet
                n_err += 1
                last_error = str(e)
                return
            for k, frame in enumerate(frames):
                n_ok += 1
                try:
                    feed(frame, pkt_pts, pkt_duration, k == 0)
                except (av.error.FFmpegError, ValueError) as e:  # the graph refused: CLI's turn
                    raise _PyAVShort(f"filter graph: {e}") from e

        packets = container.demux(stream)
        while True:
            if time.monotonic() > deadline:
                raise MediaError("audio", "timeout", f"PyAV ran over {AUDIO_TIMEOUT_S:.0f} s", p)
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as e:  # a read error ends the input like EOF (the CLI too)
                last_error = str(e)
                break
            if packet.size == 0 and packet.pts is None:
                continue  # PyAV's end-of-stream marker: the decoder is flushed below
            decode(packet)
            if emit.full:
                break
        decode(None)
        if graph is not None:
            try:
                src.push(None)
                drain()
            except av.error.FFmpegError as e:
                raise _PyAVShort(f"filter graph: {e}") from e
    if (n_ok + n_err) * _MAX_ERROR_RATE < n_err:
        raise MediaError("audio", "undecodable", f"{n_err} of {n_ok + n_err} audio packets failed "
                         f"to decode: {last_error}", p)
    if emit.seen == 0:
        raise MediaError("audio", "undecodable", last_error or "no audio decoded", p)


@functools.lru_cache(maxsize=4)
def _mel_basis(sr: int) -> np.ndarray:
    """librosa.filters.mel (slaney scale and norm, htk=False), in numpy: ``(n_mels, 1 + n_fft//2)``.

    The same float64 operations in the same order as librosa 0.11, so the basis is bit-identical
    (tests/test_media.py checks); numpy instead of librosa because importing librosa's STFT pulls
    in scipy.signal and numba, ~1 s of every worker's start."""
    m = MEL_PARAMS
    if m["htk"] or m["norm"] != "slaney":
        raise ValueError("the numpy mel basis implements htk=False, norm='slaney' only")
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(f: float) -> float:
        return min_log_mel + np.log(f / min_log_hz) / logstep if f >= min_log_hz else f / f_sp

    mels = np.linspace(hz_to_mel(m["fmin"]), hz_to_mel(m["fmax"]), m["n_mels"] + 2)
    mel_f = f_sp * mels
    log_t = mels >= min_log_mel
    mel_f[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, np.fft.rfftfreq(n=m["n_fft"], d=1.0 / sr))
    weights = np.zeros((m["n_mels"], 1 + m["n_fft"] // 2), dtype=np.float32)
    for i in range(m["n_mels"]):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2: m["n_mels"] + 2] - mel_f[: m["n_mels"]]))[:, np.newaxis]
    return weights


@functools.lru_cache(maxsize=2)
def _hann(n: int) -> np.ndarray:
    """scipy.signal.get_window("hann", n, fftbins=True): the periodic Hann window, float64."""
    return (0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, n + 1)))[:n]


def _stft_magnitude(y: np.ndarray) -> np.ndarray:
    """|librosa.stft(y)| for MEL_PARAMS (centred, reflect padding, periodic Hann window):
    ``(n_rows, 1 + n_fft//2)`` float32. As librosa: float64 window × float32 frames, numpy's
    rfft, cast to complex64, then the magnitude; in blocks of 128 frames (~2.6 MB)."""
    m = MEL_PARAMS
    n_fft, hop = m["n_fft"], m["hop_length"]
    if m["window"] != "hann" or m["win_length"] != n_fft or not m["center"]:
        raise ValueError("the numpy STFT implements a centred hann window of n_fft samples only")
    padded = np.pad(y, n_fft // 2, mode=m["pad_mode"])
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = _hann(n_fft)
    out = np.empty((len(frames), 1 + n_fft // 2), np.float32)
    for s in range(0, len(frames), 128):
        out[s: s + 128] = np.abs(np.fft.rfft(window * frames[s: s + 128], axis=-1).astype(np.complex64))
    return out


def log_mel(wav: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Log10 magnitude mel of a mono clip: ``(n_samples,)`` → ``(1 + n_samples // 160, 80)`` float32.

    Pre-emphasis 0.97, STFT (n_fft = win = 1280, hop 160, hann, centred, reflect padding),
    |STFT| through an 80-band slaney mel filterbank (55–7600 Hz), ``log10(max(mel, 1e-5))``.
    Row r is centred at r/100 s. See ``MEL_PARAMS``. numpy only (librosa's values, see
    ``_mel_basis``).
    """
    if sr != MEL_PARAMS["sr"]:
        raise ValueError(f"Expected sr={MEL_PARAMS['sr']} (the mel parameters assume it). Got {sr}.")
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"Expected mono audio (n_samples,). Got shape {wav.shape}.")
    m = MEL_PARAMS
    if len(wav) <= m["n_fft"] // 2:
        raise MediaError("audio", "too_short",
                         f"Expected more than {m['n_fft'] // 2} samples. Got {len(wav)}.")
    x = wav.astype(np.float64)
    y = x.copy()  # scipy.signal.lfilter([1, -preemphasis], [1], x)
    y[1:] += -m["preemphasis"] * x[:-1]
    spec = _stft_magnitude(y.astype(np.float32))
    mel = _mel_basis(sr) @ spec.T  # (80, n_rows), the operand layout of librosa's
    return np.ascontiguousarray(np.log10(np.maximum(mel, m["floor"])).T, dtype=np.float32)


MEL_BLOCK_ROWS = 6000  # 60 s of audio per STFT block


def log_mel_blocked(wav: np.ndarray, block_rows: int = MEL_BLOCK_ROWS) -> np.ndarray:
    """``log_mel(wav)``, computed over blocks of ``block_rows`` mel rows.

    The STFT of a whole clip costs ~50 MB per minute of audio (a 10-minute source peaked at
    +500 MB); blocks keep it at ~30 MB at any length. See ``log_mel_rows`` for why the blocks
    equal one pass.
    """
    wav = np.asarray(wav)
    n_rows = 1 + len(wav) // MEL_PARAMS["hop_length"]
    read = lambda a, b: wav[max(0, a): b]  # noqa: E731
    out = [log_mel_rows(read, len(wav), r0, min(n_rows, r0 + block_rows))
           for r0 in range(0, n_rows, block_rows)]
    return np.concatenate(out) if len(out) > 1 else out[0]


def log_mel_rows(read, n_samples: int, r0: int, r1: int) -> np.ndarray:
    """Rows ``[r0, r1)`` of ``log_mel`` over a whole track of ``n_samples`` samples, reading only
    samples near them: ``read(a, b)`` returns samples ``[a, b)``. Rows past the track's last row
    are left out (``align_mel_to_frames`` edge-pads them).

    The rows are computed from the samples ``[(r0 - 5)·160, (r1 - 1 + 5)·160 + 1)``: 5 rows (800
    samples) of context on both sides, more than a frame's half window (640) plus the
    pre-emphasis sample, so no row sees the block's own edges; a block within 10 rows of the
    track's end runs to the end instead, so the last rows get the same reflect padding as in one
    pass. Short tracks are done in one pass.
    """
    hop = MEL_PARAMS["hop_length"]
    ctx = MEL_PARAMS["n_fft"] // 2 // hop + 1
    n_rows = 1 + n_samples // hop
    r0, r1 = max(0, r0), min(n_rows, r1)
    if r1 <= r0:
        return np.zeros((0, MEL_PARAMS["n_mels"]), np.float32)
    a0 = max(0, r0 - ctx)
    s1 = n_samples if r1 >= n_rows - 2 * ctx else (r1 - 1 + ctx) * hop + 1
    return log_mel(read(a0 * hop, s1))[r0 - a0: r1 - a0]


def align_mel_to_frames(mel: np.ndarray, n_frames: int) -> np.ndarray:
    """``(n_rows, 80)`` → ``(4·n_frames, 80)``: trim the end, or edge-pad it with the last row."""
    mel = _check_mel(mel)
    rows = ROWS_PER_FRAME * int(n_frames)
    if n_frames < 0:
        raise ValueError(f"Expected n_frames >= 0. Got {n_frames}.")
    if len(mel) >= rows:
        return mel[:rows]
    if len(mel) == 0:
        raise ValueError(f"Expected a non-empty mel to pad to {rows} rows. Got 0 rows.")
    return np.pad(mel, ((0, rows - len(mel)), (0, 0)), mode="edge")


def mel_window(mel: np.ndarray, i: int) -> np.ndarray:
    """Frame i's audio window ``(20, 80)``: rows [4i-8, 4i+12), indexes clamped to the clip."""
    return mel_windows(mel, np.asarray([i]))[0]


def mel_windows(mel: np.ndarray, idx) -> np.ndarray:
    """Windows of frames ``idx`` (k,) → ``(k, 20, 80)``; same rule as ``mel_window``."""
    mel = _check_mel(mel)
    if len(mel) == 0:
        raise ValueError("Expected a non-empty mel. Got 0 rows.")
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    rows = ROWS_PER_FRAME * idx[:, None] + np.arange(*WINDOW_ROWS)[None, :]
    return mel[np.clip(rows, 0, len(mel) - 1)]


def model_input(L):
    """The model's view of stored log-mel: ``clip(1.6·L + 2.4, -4, 4)`` (numpy or torch, any shape)."""
    y = 1.6 * L + 2.4
    if hasattr(y, "clamp"):
        return y.clamp(-4.0, 4.0)
    return np.clip(y, -4.0, 4.0)


def _check_mel(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[1] != MEL_PARAMS["n_mels"]:
        raise ValueError(f"Expected mel (n_rows, {MEL_PARAMS['n_mels']}). Got shape {mel.shape}.")
    return mel
