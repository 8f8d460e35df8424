"""Probe media files (PyAV, else ffprobe), and the typed error every media stage raises.

``probe(path)`` reads container/stream headers only (no decoding) and returns a frozen
:class:`MediaInfo`. Decoding lives in ``preprocess.video`` and ``preprocess.audio``.

Two backends fill the same ffprobe-shaped record (``{"streams": [...], "format": {...}}``, the
fields of ``ffprobe -show_streams -show_format -print_format json``), which one function,
``_info_from_probe``, turns into a :class:`MediaInfo`, so both follow every convention below:

- ``"pyav"``: libavformat in-process through PyAV (~2 ms; no process start). Times are formatted
  the way ffprobe prints them (``%f`` of ``ts * time_base``, so rounded to 1 µs), rationals as
  ffprobe's ``"num/den"``, absent values (``N/A``) left out.
- ``"ffprobe"``: the ``ffprobe`` CLI (~60-70 ms, mostly process start).
- ``"auto"`` (default): PyAV, and ffprobe whenever PyAV cannot open or parse the file or its
  answer lacks something ``MediaInfo`` needs (a stream PyAV has no decoder context for, an
  unreadable display matrix, a zero size or sample rate), so every file ffprobe probes still
  probes (a PyAV timeout is final: ffprobe would wait as long). The PyAV wheel bundles its own
  FFmpeg (8.x here), which reads a few files differently from the system ffprobe (5.1 here);
  tests/test_media_pyav.py checks that both agree field by field on every media file of the
  test suite and lists the differences found (MP3 gapless duration, Opus-in-WebM start).

Conventions (see SPEC "Media conventions"):

- ``width``/``height`` are the *display* size: the coded size with the rotation applied
  (a 1920×1080 phone clip with ``rotation == 90`` probes as 1080×1920).
- ``rotation`` is the clockwise rotation, in degrees (0/90/180/270), that a player applies to the
  coded frames, i.e. the legacy ``rotate`` tag convention. It is read from the display matrix
  (ffprobe's ``side_data_list[].rotation``, which is counter-clockwise, hence negated), or from the
  ``rotate`` tag when there is no display matrix.
- ``is_vfr`` compares the stream headers: ``r_frame_rate`` (the base rate ffmpeg guesses from the
  timestamps) against ``avg_frame_rate`` (frames / duration); they differ by more than 1 % for
  variable frame rate streams (dropped frames, phone recordings). Header-only, so cheap; it misses
  VFR streams whose average happens to equal the base rate. Both decoders in ``preprocess.video``
  map timestamps to 25 fps themselves, so a missed VFR flag costs speed, never correctness.
- ``duration_s`` is the video stream's duration (its first frame that decodes to the end of the
  last frame; measured from the packets when the stream states no length: ``_from_packets``), and
  ``n_frames_25`` = round(duration_s × 25) (ties up), the count ffmpeg's ``fps`` filter produces.
  Without video, ``duration_s`` is the audio duration and ``n_frames_25`` is 0.
- ``video_start_s``/``audio_start_s`` are the streams' start times on the container timeline
  (which starts at 0), the video's that of its first frame that decodes (what the decoders show
  as frame 0); ``preprocess.audio.load_audio`` uses them to put audio sample 0 at that frame.

File names are handed to ffmpeg and PyAV as ``file:<absolute path>``, so no name (leading '-',
quotes, ``$(...)``, unicode, ':') is ever read as an option or a protocol.

Only media containers are opened (``ALLOWED_FORMATS``): every open, in-process
(``open_av``) and by the CLIs (``cli_input``), passes libavformat's ``format_whitelist`` and
``protocol_whitelist=file``, so a playlist (HLS ``.m3u8``, also when named ``.mp4``), a concat
list, an image sequence or a device is refused before it can read anything, as
``MediaError(stage, 'unsupported_container')``; text playlists are recognised from their first
bytes before any library sees them.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Optional

from preprocess import failures

__all__ = [
    "MediaError",
    "MediaInfo",
    "probe",
    "validate",
    "ffmpeg_input",
    "ffmpeg_bin",
    "frames_at",
    "PROBE_BACKENDS",
    "ALLOWED_FORMATS",
    "cli_input",
    "open_av",
    "check_limits",
    "check_gaps",
]

PROBE_TIMEOUT_S = 120.0
#: libavformat demuxers that may be opened: the containers video corpora hold, and the audio files
#: dubbing reads. None of them opens another file; playlists (hls, dash, concat), image
#: sequences (image2) and devices are not here. (A name matches a demuxer listing it, e.g. 'mov'
#: matches 'mov,mp4,m4a,3gp,3g2,mj2' and 'matroska' matches 'matroska,webm'.)
ALLOWED_FORMATS = ("mov", "matroska", "avi", "mpegts", "flv", "mpeg", "asf", "ogg", "mxf", "ivf",
                   "h264", "hevc", "wav", "w64", "mp3", "flac", "aac", "aiff", "ac3", "eac3")
FORMAT_WHITELIST = ",".join(ALLOWED_FORMATS)
_AV_OPTIONS = {"format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": "file"}
_PLAYLIST_MAGIC = (b"#EXTM3U", b"#EXTINF", b"ffconcat", b"[playlist]", b"<?xml", b"<MPD", b"<smil",
                   b"file '", b"file /")
PROBE_BACKENDS = ("auto", "pyav", "ffprobe")
STAGES = ("probe", "decode", "audio")
_VFR_TOLERANCE = 0.01


class MediaError(Exception):
    """A media file that cannot become training data, with a machine-readable cause.

    Attributes:
        stage: 'probe' | 'decode' | 'audio' — which step refused the file.
        reason: short slug, e.g. 'zero_bytes', 'not_found', 'undecodable', 'no_video_stream',
            'no_audio_stream', 'truncated', 'too_short', 'too_small', 'timeout'.
        message: human-readable detail (ffmpeg's last stderr lines where there are some).
        path: the file concerned, or None.
    """

    def __init__(self, stage: str, reason: str, message: str = "", path: Optional[str] = None):
        if stage not in STAGES:
            raise ValueError(f"Expected stage in {STAGES}. Got {stage!r}.")
        self.stage = stage
        self.reason = reason
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(stage, reason, message, self.path)

    def __str__(self) -> str:
        where = f" [{self.path}]" if self.path else ""
        return f"{self.stage}/{self.reason}: {self.message}{where}"

    def __reduce__(self):  # keeps stage/reason through pickling (Beam, multiprocessing)
        return (type(self), (self.stage, self.reason, self.message, self.path))


@dataclass(frozen=True)
class MediaInfo:
    """What the probe says about a file (see the module docstring for each convention)."""

    path: str
    has_video: bool
    has_audio: bool
    width: int = 0  # display width (after rotation); 0 without video
    height: int = 0  # display height (after rotation)
    rotation: int = 0  # clockwise degrees, 0/90/180/270
    fps: float = 0.0  # avg_frame_rate
    is_vfr: bool = False  # r_frame_rate vs avg_frame_rate differ by > 1 %
    duration_s: float = 0.0  # video stream duration (audio's when there is no video)
    n_frames_25: int = 0  # frames after resampling to 25 fps CFR
    video_codec: Optional[str] = None
    pix_fmt: Optional[str] = None
    audio_rate: Optional[int] = None
    audio_channels: Optional[int] = None
    audio_codec: Optional[str] = None
    audio_duration_s: Optional[float] = None
    r_frame_rate: str = "0/0"  # ffprobe's rational strings, exact
    avg_frame_rate: str = "0/0"
    nb_frames: Optional[int] = None  # from the header, when the container stores it
    video_start_s: float = 0.0  # on the container timeline (which starts at 0)
    audio_start_s: float = 0.0
    video_index: Optional[int] = None  # absolute stream indexes (for -map 0:<index>)
    audio_index: Optional[int] = None
    video_streams: int = 0  # video streams that are not cover art
    container: str = ""
    size_bytes: int = 0
    sar: float = 1.0  # a displayed pixel's width / height, after rotation (anamorphic video: not 1)
    #: the first video frame that decodes, in the file's own timestamps (s), when frames before it do
    #: not (a cut mid-GOP; None otherwise): an older decoder (the ffmpeg CLI's) may output those grey
    decodable_from_s: Optional[float] = None
    #: the first frame that decodes is interlaced (field-coded: AVCHD camcorders, DVD, broadcast
    #: 1080i/576i): the decoders deinterlace (yadif, frames flagged interlaced only), else every
    #: moving edge (a mouth) is combed
    interlaced: bool = False
    #: colour as the stream states it (ffprobe's names; None: not stated): HDR (``color_transfer`` in
    #: ``HDR_TRANSFERS``: phones' HLG, HDR10's PQ) and BT.2020 colour are turned into the SDR BT.709
    #: pictures the rest of radio assumes (``video.sdr_filters``), else faces come out dark and grey
    color_transfer: Optional[str] = None
    color_primaries: Optional[str] = None
    color_space: Optional[str] = None   # the YUV matrix
    color_range: Optional[str] = None   # tv (limited) | pc (full)

    @property
    def deinterlace(self) -> bool:
        """Whether the decoders run yadif (on the frames flagged interlaced): an interlaced first
        frame, or a broadcast, camcorder or DVD container, whose recordings can turn interlaced
        after a progressive start (a film or an advert before a live 1080i/576i programme)."""
        return self.interlaced or bool(set(self.container.split(",")) & set(INTERLACING_FORMATS))

    @property
    def hdr(self) -> bool:
        """HDR video (PQ or HLG transfer)."""
        return self.color_transfer in HDR_TRANSFERS

    @property
    def wide_colour(self) -> bool:
        """HDR, or BT.2020 primaries: colour that a plain YUV -> RGB conversion gets wrong."""
        return self.hdr or self.color_primaries == "bt2020"

    @property
    def display_size(self) -> tuple[int, int]:
        """(H, W) of a frame as displayed, in square pixels: an anamorphic frame is stretched, never
        shrunk (the width by ``sar`` when it is > 1, the height by 1/``sar`` when < 1)."""
        h, w = self.height, self.width
        sar = self.sar if self.sar and self.sar > 0 else 1.0
        if sar > 1.0 + 1e-6:
            w = max(1, int(round(w * sar)))
        elif sar < 1.0 - 1e-6:
            h = max(1, int(round(h / sar)))
        return h, w


#: containers of broadcast, camcorder and DVD video (FFmpeg's names), which can hold interlaced frames
#: after progressive ones: their decode deinterlaced whatever their first frame (``MediaInfo.deinterlace``)
INTERLACING_FORMATS = ("mpegts", "mpeg", "mxf", "dv")
#: the transfer functions of HDR video: PQ (HDR10, Dolby Vision 8.x) and HLG (phones since 2020,
#: broadcast)
HDR_TRANSFERS = ("smpte2084", "arib-std-b67")
#: PyAV's colour enums (FFmpeg's AVColor* values) by ffprobe's names, for the ones radio acts on or shows
_AV_TRC = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear", 13: "iec61966-2-1",
           14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 18: "arib-std-b67"}
_AV_PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020",
                 11: "smpte431", 12: "smpte432"}
_AV_SPACE = {0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020nc",
             10: "bt2020c"}
_AV_RANGE = {1: "tv", 2: "pc"}


def ffmpeg_bin(name: str) -> str:
    """Absolute path of ``ffmpeg``/``ffprobe`` (env ``RADIO_FFMPEG``/``RADIO_FFPROBE`` overrides)."""
    env = os.environ.get("RADIO_" + name.upper())
    found = env or shutil.which(name)
    if not found:
        raise FileNotFoundError(
            f"Expected the {name} executable on PATH (apt-get install ffmpeg). Got none.")
    return found


def ffmpeg_input(path) -> str:
    """``file:<absolute path>`` for ffmpeg's ``-i``: never an option, never another protocol."""
    return "file:" + os.path.abspath(os.fspath(path))


def cli_input(path) -> list[str]:
    """The ffmpeg/ffprobe input arguments of ``path``: allowed containers, the file protocol only."""
    return ["-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST,
            "-i", ffmpeg_input(path)]


def _allowed(format_name: str) -> bool:
    return bool(set(format_name.split(",")) & set(ALLOWED_FORMATS))


def open_av(path, stage: str, timeout: Optional[float] = None):
    """``av.open`` of a local file with the container allow-list and the file protocol only.

    Raises:
        MediaError(stage): 'unsupported_container' (a format off the allow-list), 'timeout'
            (open/find_stream_info ran over ``timeout``) or 'undecodable'.
        ImportError: no PyAV.
    """
    import av

    p = os.fspath(path)
    try:
        container = av.open(ffmpeg_input(p), metadata_errors="replace", timeout=timeout,
                            container_options=dict(_AV_OPTIONS))
    except av.error.ExitError as e:  # the interrupt callback: open/find_stream_info ran over
        raise MediaError(stage, "timeout", f"PyAV ran over {timeout:.0f} s", p) from e
    except av.error.ArgumentError as e:  # EINVAL: libavformat's "Format not on whitelist"
        raise MediaError(stage, "unsupported_container",
                         f"not a container on the allow-list ({e})", p) from e
    except (av.error.FFmpegError, OSError, ValueError, UnicodeError) as e:
        raise MediaError(stage, "undecodable", str(e) or type(e).__name__, p) from e
    if not _allowed(container.format.name):
        container.close()
        raise MediaError(stage, "unsupported_container", f"format {container.format.name}", p)
    return container


def cli_error(stage: str, err: str, path: str, default: str) -> MediaError:
    """The MediaError of a failed ffmpeg/ffprobe run from its stderr tail."""
    if "not on whitelist" in err:
        return MediaError(stage, "unsupported_container", f"not a container on the allow-list: {err}", path)
    return MediaError(stage, "undecodable", err or default, path)


def _check_file(path, stage: str) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        from preprocess.uri import missing_hint   # (fsspec: not imported by the decode child otherwise)

        raise MediaError(stage, "not_found", "no such file" + missing_hint(p), p)
    if not os.path.isfile(p):
        raise MediaError(stage, "unsupported_container", "not a regular file (a device, fifo or folder)", p)
    if os.path.getsize(p) == 0:
        raise MediaError(stage, "zero_bytes", "file is empty", p)
    with open(p, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(_PLAYLIST_MAGIC):
        raise MediaError(stage, "unsupported_container",
                         f"a playlist or list of files ({head[:12]!r}...), not a media file", p)
    return p


def _stderr_tail(text: str, n: int = 5) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-600:]


def _rate(s: Optional[str]) -> Fraction:
    try:
        num, _, den = (s or "0/0").partition("/")
        den_i = int(den or 1)
        return Fraction(int(num), den_i) if den_i else Fraction(0)
    except ValueError:
        return Fraction(0)


def _float(x) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(x) -> Optional[int]:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def _tags(d: dict) -> dict:
    return {k.upper(): v for k, v in (d.get("tags") or {}).items()}


def _tag_duration(stream: dict, fmt: dict) -> Optional[float]:
    """Matroska/WebM keep a stream's length in a ``DURATION`` tag, 'HH:MM:SS.fffffffff'. mkvmerge
    writes the stream's duration there, but FFmpeg's muxer (``ENCODER`` tag 'Lavf…': ffmpeg, OBS,
    most tools) the time its last frame ends, its start included: a video starting 0.5 s into the
    file read 0.5 s long (12 frames that never came: a `truncated` reject), and every x264 MKV's
    B-frame delay (0.064 s) read as two frames more (padded with frozen copies)."""
    value = _tags(stream).get("DURATION")
    if not value:
        return None
    try:
        h, m, s = value.split(":")
        d = int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        return None
    if str(_tags(fmt).get("ENCODER", "")).startswith("Lavf") and "_STATISTICS_TAGS" not in _tags(stream):
        d -= _float(stream.get("start_time")) or 0.0   # (mkvpropedit's statistics tags are durations)
    return d


def _rotation(stream: dict) -> int:
    """Clockwise display rotation in degrees, snapped to a multiple of 90."""
    ccw = None
    for sd in stream.get("side_data_list") or []:
        if "rotation" in sd:
            ccw = _float(sd["rotation"])
            break
    if ccw is not None:
        cw = -ccw
    else:
        cw = _float((stream.get("tags") or {}).get("rotate")) or 0.0
    return int(round(cw / 90.0)) * 90 % 360


def frames_at(duration_s: float, fps=25) -> int:
    """Frames of a ``duration_s`` stream resampled to ``fps`` CFR: round(duration·fps), ties up."""
    return int(math.floor(duration_s * float(fps) + 0.5 + 1e-9)) if duration_s > 0 else 0


def _default_first(streams: list[dict]) -> list[dict]:
    """``streams`` with the first one whose disposition is ``default`` moved to the front (stable)."""
    pick = next((s for s in streams if (s.get("disposition") or {}).get("default")), None)
    return [pick] + [s for s in streams if s is not pick] if pick is not None else streams


def _is_cover(stream: dict) -> bool:
    return bool((stream.get("disposition") or {}).get("attached_pic"))


def probe(path, backend: str = "auto") -> MediaInfo:
    """Probe a local file (headers only) with PyAV or ffprobe; see the module docstring.

    Args:
        backend: 'auto' (PyAV, then ffprobe where PyAV fails or falls short), 'pyav' or 'ffprobe'.

    Raises:
        MediaError(stage='probe'): reason 'not_found', 'zero_bytes', 'undecodable' (the
            container cannot be parsed), 'no_streams' or 'timeout'.
    """
    if backend not in PROBE_BACKENDS:
        raise ValueError(f"Expected backend in {PROBE_BACKENDS}. Got {backend!r}.")
    p = _check_file(path, "probe")
    data = pyav_or_cli(backend, "ffprobe", "probe", p, lambda: _probe_pyav(p), lambda: _probe_ffprobe(p))
    return _from_packets(p, _info_from_probe(p, data), data)


def pyav_or_cli(backend: str, cli: str, stage: str, path: str, pyav_fn, cli_fn):
    """``pyav_fn()`` unless ``backend == cli``; with 'auto', ``cli_fn()`` where PyAV falls short
    (``_PyAVShort``) or fails with a MediaError other than a timeout (the CLI would wait as long)
    or an unsupported container (the CLI has the same allow-list).
    With 'pyav', a shortfall is ``MediaError(stage, 'undecodable')`` and PyAV's errors are final."""
    if backend != cli:
        try:
            return pyav_fn()
        except _PyAVShort as e:
            if backend == "pyav":
                raise MediaError(stage, "undecodable", f"PyAV: {e}", path) from e
        except MediaError as e:
            if backend == "pyav" or e.reason in ("timeout", "unsupported_container"):
                raise
    return cli_fn()


def _probe_ffprobe(p: str) -> dict:
    """``ffprobe -show_format -show_streams`` of ``p`` as parsed JSON."""
    cmd = [ffmpeg_bin("ffprobe"), "-v", "error", "-hide_banner", "-print_format", "json",
           "-show_format", "-show_streams", *cli_input(p)]
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise MediaError("probe", "timeout", f"ffprobe ran over {PROBE_TIMEOUT_S:.0f} s", p) from e
    err = res.stderr.decode("utf-8", "replace")
    failures.raise_if_killed(res.returncode, "ffprobe")   # the OOM killer, not the file: retried, not a reject
    if res.returncode != 0:
        raise cli_error("probe", _stderr_tail(err), p, "ffprobe failed")
    try:
        return json.loads(res.stdout.decode("utf-8", "replace") or "{}")
    except json.JSONDecodeError as e:
        raise MediaError("probe", "undecodable", f"unreadable ffprobe output: {e}", p) from e


# ----------------------------------------------------------------------------- PyAV probe
class _PyAVShort(Exception):
    """The PyAV path cannot give what the CLI would here (``probe``: a field MediaInfo needs;
    ``load_audio``: an exact copy of the CLI's chain); backend='auto' falls back to the CLI."""


_AV_TIME_BASE = Fraction(1, 1_000_000)
_DUMP_LOCK = threading.Lock()
_DUMP_STREAM = re.compile(r"^\s*Stream #\d+:(\d+)")
_DUMP_SECTION = re.compile(r"^\s*(?:Program|Stream group|Chapters?)\b")
_DUMP_ROTATION = re.compile(r"^\s+display ?matrix:\s*rotation of\s+(\S+)\s+degrees", re.I)


def _ff_time(ts: Optional[int], time_base) -> Optional[str]:
    """ffprobe's ``print_time``: ``"%f"`` of ``ts * av_q2d(time_base)``; None for AV_NOPTS_VALUE."""
    if ts is None or time_base is None:
        return None
    return "%f" % (ts * (time_base.numerator / time_base.denominator))


def _ff_q(q) -> str:
    """ffprobe's ``print_q(..., '/')``; PyAV maps 0/x and x/0 to None, ffprobe prints them."""
    return f"{q.numerator}/{q.denominator}" if q else "0/0"


def _dump_rotations(container) -> dict[int, float]:
    """Counter-clockwise display-matrix rotation per stream index, as ``av_dump_format`` logs it.

    PyAV 18 has no getter for a stream's coded side data, so the rotation is read from the
    ``Side data: Display Matrix: rotation of X degrees`` line that libavformat's own dump prints
    (the value of ``av_display_rotation_get``, the function ffprobe's ``side_data_list`` uses).
    Capturing the dump means turning PyAV's log callback on for ~0.1 ms; a lock keeps
    concurrent probes from switching it off under each other, and the previous level is restored.
    Raises _PyAVShort when the dump does not name every stream (capture failed).
    """
    import av.logging

    with _DUMP_LOCK:
        level, skip = av.logging.get_level(), av.logging.get_skip_repeated()
        if level is None or level < av.logging.INFO:
            av.logging.set_level(av.logging.INFO)
        av.logging.set_skip_repeated(False)
        try:
            text = container.dumps_format()
        finally:
            av.logging.set_skip_repeated(skip)
            if level is None or level < av.logging.INFO:
                av.logging.set_level(level)
    seen: set = set()
    rotations: dict[int, float] = {}
    current: Optional[int] = None
    for line in text.splitlines():
        m = _DUMP_STREAM.match(line)
        if m:
            current = int(m.group(1))
            seen.add(current)
            continue
        if _DUMP_SECTION.match(line):
            current = None
            continue
        m = _DUMP_ROTATION.match(line)
        if m and current is not None and current not in rotations:
            try:
                ccw = float(m.group(1))
            except ValueError:
                raise _PyAVShort(f"unreadable display matrix: {line.strip()!r}") from None
            if not math.isfinite(ccw):
                raise _PyAVShort(f"degenerate display matrix: {line.strip()!r}")
            rotations[current] = ccw
    missing = {s.index for s in container.streams} - seen
    if missing:
        raise _PyAVShort(f"stream(s) {sorted(missing)} missing from the format dump")
    return rotations


def _probe_pyav(p: str) -> dict:
    """The ffprobe JSON fields ``_info_from_probe`` reads, filled from PyAV (see ``_probe_ffprobe``).

    Raises:
        MediaError(stage='probe'): 'undecodable' (libavformat cannot open/parse the file) or
            'timeout'.
        _PyAVShort: opened, but a video/audio stream lacks something MediaInfo needs.
    """
    try:
        import av
    except ImportError as e:  # no PyAV: ffprobe only
        raise _PyAVShort(f"PyAV unavailable: {e}") from e
    container = open_av(p, "probe", PROBE_TIMEOUT_S)
    with container:
        try:
            return _pyav_fields(av, container)
        except (av.error.FFmpegError, ValueError, UnicodeError) as e:
            raise _PyAVShort(f"{type(e).__name__}: {e}") from e


def _pyav_fields(av, container) -> dict:
    """``_probe_pyav``'s record from an open PyAV input container."""
    need_dump = False
    streams = []
    for st in container.streams:
        kind = st.type
        d: dict = {"index": st.index, "codec_type": kind,
                   "disposition": {"attached_pic": int(bool(st.disposition & av.stream.Disposition.attached_pic)),
                                   "default": int(bool(st.disposition & av.stream.Disposition.default))},
                   "tags": dict(st.metadata)}
        tb = st.time_base
        for key, value in (("start_time", _ff_time(st.start_time, tb)),
                           ("duration", _ff_time(st.duration, tb))):
            if value is not None:
                d[key] = value
        if kind in ("video", "audio"):
            cc = st.codec_context
            if cc is None:
                raise _PyAVShort(f"no decoder context for {kind} stream {st.index}")
            d["codec_name"] = cc.codec.canonical_name
            if st.frames:
                d["nb_frames"] = str(st.frames)
        if kind == "video":
            if not (cc.width and cc.height):
                raise _PyAVShort(f"video stream {st.index} has no size")
            d.update(width=cc.width, height=cc.height,
                     r_frame_rate=_ff_q(st.base_rate), avg_frame_rate=_ff_q(st.average_rate))
            sar = getattr(st, "sample_aspect_ratio", None) or cc.sample_aspect_ratio
            if sar:                                    # ffprobe prints it only when it is known
                d["sample_aspect_ratio"] = f"{sar.numerator}:{sar.denominator}"
            if cc.pix_fmt:
                d["pix_fmt"] = cc.pix_fmt
            for key, names, value in (("color_transfer", _AV_TRC, cc.color_trc),
                                      ("color_primaries", _AV_PRIMARIES, cc.color_primaries),
                                      ("color_space", _AV_SPACE, cc.colorspace),
                                      ("color_range", _AV_RANGE, cc.color_range)):
                if int(value or 0) in names:           # ffprobe prints what is stated
                    d[key] = names[int(value)]
            need_dump = need_dump or not d["disposition"]["attached_pic"]
        elif kind == "audio":
            if not (cc.sample_rate and cc.channels):
                raise _PyAVShort(f"audio stream {st.index} has no sample rate/channels")
            d.update(sample_rate=str(cc.sample_rate), channels=cc.channels)
        streams.append(d)
    if need_dump:
        for index, ccw in _dump_rotations(container).items():
            streams[index]["side_data_list"] = [{"rotation": int(ccw)}]  # ffprobe's print_int
    fmt: dict = {"format_name": container.format.name, "tags": dict(container.metadata)}
    for key, value in (("start_time", _ff_time(container.start_time, _AV_TIME_BASE)),
                       ("duration", _ff_time(container.duration, _AV_TIME_BASE))):
        if value is not None:
            fmt[key] = value
    size = container.size
    if size is not None and size >= 0:
        fmt["size"] = str(size)
    return {"streams": streams, "format": fmt}


def _info_from_probe(path: str, data: dict) -> MediaInfo:
    streams = data.get("streams") or []
    fmt = data.get("format") or {}
    if not streams:
        raise MediaError("probe", "no_streams", "no audio or video stream", path)
    # the stream a player shows: the first marked default, else the first (a second camera angle or
    # a commentary track placed first is not the talking face and its speech)
    videos = _default_first([s for s in streams if s.get("codec_type") == "video" and not _is_cover(s)])
    audios = _default_first([s for s in streams if s.get("codec_type") == "audio"])
    fmt_start = _float(fmt.get("start_time")) or 0.0
    fmt_duration = _float(fmt.get("duration"))

    def start_of(s: dict) -> float:
        st = _float(s.get("start_time"))
        return max(0.0, (st if st is not None else fmt_start) - fmt_start)

    def duration_of(s: dict) -> Optional[float]:
        d = _float(s.get("duration"))
        if d is None:
            d = _tag_duration(s, fmt)
        if d is None and fmt_duration is not None:
            d = fmt_duration - start_of(s)
        return d if d is not None and d > 0 else None

    kw: dict = dict(path=path, has_video=bool(videos), has_audio=bool(audios),
                    container=str(fmt.get("format_name", "")),
                    size_bytes=_int(fmt.get("size")) or os.path.getsize(path),
                    video_streams=len(videos))
    if audios:
        a = audios[0]
        kw.update(audio_rate=_int(a.get("sample_rate")), audio_channels=_int(a.get("channels")),
                  audio_codec=a.get("codec_name"), audio_duration_s=duration_of(a),
                  audio_start_s=start_of(a), audio_index=_int(a.get("index")))
    if videos:
        v = videos[0]
        rotation = _rotation(v)
        w, h = _int(v.get("width")) or 0, _int(v.get("height")) or 0
        num, _, den = str(v.get("sample_aspect_ratio") or "1:1").partition(":")
        sar = float(Fraction(int(num), int(den))) if num.isdigit() and den.isdigit() and int(num) and int(den) else 1.0
        if rotation in (90, 270):
            w, h, sar = h, w, 1.0 / sar
        r, avg = _rate(v.get("r_frame_rate")), _rate(v.get("avg_frame_rate"))
        fps = float(avg or r)
        is_vfr = bool(r and avg and abs(float(avg - r)) > _VFR_TOLERANCE * float(r))
        duration = duration_of(v) or 0.0
        kw.update(width=w, height=h, sar=sar, rotation=rotation, fps=fps, is_vfr=is_vfr,
                  duration_s=duration, n_frames_25=frames_at(duration, 25),
                  video_codec=v.get("codec_name"), pix_fmt=v.get("pix_fmt"),
                  r_frame_rate=str(v.get("r_frame_rate", "0/0")),
                  avg_frame_rate=str(v.get("avg_frame_rate", "0/0")),
                  nb_frames=_int(v.get("nb_frames")), video_start_s=start_of(v),
                  video_index=_int(v.get("index")),
                  **{k: v[k] for k in ("color_transfer", "color_primaries", "color_space", "color_range")
                     if v.get(k) and v[k] != "unknown"})
    else:
        kw.update(duration_s=kw.get("audio_duration_s") or fmt_duration or 0.0)
    return MediaInfo(**kw)


#: the video packets the probe decodes at most looking for the first frame that decodes (a 10 s GOP
#: at 60 fps; past it the header's start stands and the decoders decide)
FIRST_FRAME_PACKETS = 600


def _from_packets(p: str, info: MediaInfo, data: dict) -> MediaInfo:
    """What the headers cannot tell, from the packets (PyAV; ``info`` as it is without PyAV or
    when PyAV cannot read the file: the decoders decide then):

    - the video starts at its first frame that *decodes*, which the decoders take as frame 0 (the
      timeline's origin) and ``load_audio`` as audio sample 0: a capture cut mid-GOP (an MPEG-TS
      recording, a stream dump) starts with frames that cannot be decoded, so the header's start
      put the audio that many frames late against the video (80 ms for 2 frames) and counted
      frames that never came (padded at the end, or a `truncated` reject past 2). Costs one
      frame's decode, which also tells whether the video is interlaced (``interlaced``).
    - a video stream that states no length of its own (Matroska/WebM written to a pipe, a
      browser's MediaRecorder, a live capture, FLV) has its streams' spans measured from their
      packets' timestamps (read, not decoded): without any duration it read as 0 s (a `too_short`
      reject), and the format's duration, which libavformat estimates when the file states none,
      is not the video's (a piped 3 s MKV: 2.936 s, two frames short)."""
    if not info.has_video or info.video_index is None:
        return info
    try:
        import av
    except ImportError:
        return info
    stated = {s.get("index"): _float(s.get("duration")) is not None or bool(_tags(s).get("DURATION"))
              for s in data.get("streams") or []}
    # no length of its own: the format's (libavformat estimates one, from the bitrate or the last
    # packets: 2.936 s for a piped 3 s MKV), or none
    unknown = info.duration_s <= 0 or not stated.get(info.video_index)
    fmt_start = _float((data.get("format") or {}).get("start_time")) or 0.0
    try:
        container = open_av(p, "probe", PROBE_TIMEOUT_S)
    except MediaError as e:
        if e.reason == "unsupported_container":
            raise
        return info
    first: Optional[Fraction] = None
    span: dict[int, list] = {}   # stream index -> [first packet time, end of the last packet]
    with container:
        wanted = {info.video_index} | ({info.audio_index} if unknown and info.audio_index is not None else set())
        try:
            streams = [container.streams[i] for i in sorted(wanted)]
        except IndexError:
            return info
        for st in container.streams:
            if st.index not in wanted:
                st.discard = av.stream.Discard.all
        video = container.streams[info.video_index]
        video.thread_type, video.thread_count = "SLICE", 1
        tried = 0

        interlaced = False

        def first_of(frames) -> Optional[Fraction]:
            nonlocal interlaced
            for f in frames:
                if f.pts is not None and f.time_base is not None:
                    interlaced = bool(f.interlaced_frame)
                    return f.pts * f.time_base
            return None

        try:
            for packet in container.demux(streams):
                if packet.stream_index == info.video_index and first is None and tried < FIRST_FRAME_PACKETS:
                    tried += 1
                    try:
                        first = first_of(packet.decode())
                    except av.error.FFmpegError:   # a packet that cannot be decoded: the next one
                        pass
                if unknown:
                    if packet.pts is not None and packet.time_base is not None:
                        t = packet.pts * packet.time_base
                        end = t + (packet.duration or 0) * packet.time_base
                        s = span.setdefault(packet.stream_index, [t, end])
                        s[0], s[1] = min(s[0], t), max(s[1], end)
                elif first is not None or tried >= FIRST_FRAME_PACKETS:
                    break
        except av.error.FFmpegError:
            pass   # a damaged file: what was read so far
    changes: dict = {"interlaced": True} if interlaced else {}
    start = info.video_start_s
    if first is not None and float(first) - fmt_start > start + 1e-3:
        start = float(first) - fmt_start
        changes.update(video_start_s=start, decodable_from_s=float(first))
        if not unknown:
            changes["duration_s"] = max(0.0, info.duration_s - (start - info.video_start_s))
    if unknown and info.video_index in span:
        changes["duration_s"] = max(0.0, float(span[info.video_index][1]) - fmt_start - start)
        a = span.get(info.audio_index)
        if a is not None and not stated.get(info.audio_index):
            changes["audio_duration_s"] = float(a[1] - a[0])
    if "duration_s" in changes:
        changes["n_frames_25"] = frames_at(changes["duration_s"], 25)
    return replace(info, **changes) if changes else info


def validate(info: MediaInfo, *, need_video: bool = True, need_audio: bool = False,
             min_duration_s: float = 0.0, min_side: int = 0) -> MediaInfo:
    """Refuse a probed file that cannot become a training clip; return ``info`` unchanged.

    Raises:
        MediaError(stage='probe'): reason 'no_video_stream', 'no_audio_stream', 'too_short'
            (duration < ``min_duration_s`` or no whole 25 fps frame) or 'too_small'
            (display min(width, height) < ``min_side``).
    """
    if need_video and not info.has_video:
        raise MediaError("probe", "no_video_stream", "no video stream", info.path)
    if need_audio and not info.has_audio:
        raise MediaError("probe", "no_audio_stream", "no audio stream", info.path)
    if info.duration_s < min_duration_s or (need_video and info.n_frames_25 < 1):
        raise MediaError("probe", "too_short",
                         f"Expected at least {min_duration_s:g} s and one 25 fps frame. "
                         f"Got {info.duration_s:.3f} s ({info.n_frames_25} frames).", info.path)
    if need_video and min(info.width, info.height) < min_side:
        raise MediaError("probe", "too_small",
                         f"Expected min side >= {min_side} px. Got {info.width}x{info.height}.",
                         info.path)
    return info


def check_limits(info: MediaInfo, *, max_pixels: Optional[int] = None,
                 max_duration_s: Optional[float] = None,
                 max_gap_s: Optional[float] = None) -> MediaInfo:
    """Refuse what a file declares beyond the limits (from the probe, nothing decoded).

    Raises:
        MediaError(stage='probe'): 'too_large' (width × height > ``max_pixels``), 'too_long'
            (duration > ``max_duration_s``) or 'timestamp_gap' (audio and video start more
            than ``max_gap_s`` apart).
    """
    if max_pixels is not None:
        # frames are decoded as displayed (square pixels): a declared sample aspect ratio of 100:1
        # makes a 1024² frame 102,400 pixels wide, so the limit holds for the displayed size too
        h, w = info.display_size
        if max(w * h, info.width * info.height) > max_pixels:
            shown = f"{info.width}x{info.height}" + (f" (displayed {w}x{h})" if (h, w) != (info.height, info.width)
                                                     else "")
            raise MediaError("probe", "too_large", f"Expected at most {max_pixels} pixels a frame. "
                             f"Got {shown}.", info.path)
    if max_duration_s is not None and info.duration_s > max_duration_s:
        raise MediaError("probe", "too_long", f"Expected at most {max_duration_s:g} s. "
                         f"Got {info.duration_s:.1f} s.", info.path)
    if (max_gap_s is not None and info.has_video and info.has_audio
            and abs(info.audio_start_s - info.video_start_s) > max_gap_s):
        raise MediaError("probe", "timestamp_gap", f"Expected audio and video to start within "
                         f"{max_gap_s:g} s. Got {info.video_start_s:.1f} s and "
                         f"{info.audio_start_s:.1f} s.", info.path)
    return info


def check_gaps(path, info: MediaInfo, max_gap_s: float) -> None:
    """Refuse a file whose video or audio timestamps jump forward by more than ``max_gap_s``.

    Reads packets only (no decoding), and only when a stream is longer than ``max_gap_s``. A
    gap would otherwise be decoded as filler: the 25 fps emitter repeats the frame before it,
    the audio chain fills it with silence (a 600 s gap made 15,000 frames out of 174). A
    stream that PyAV cannot demux is left to the decoders; an MPEG-TS capture with a timestamp
    discontinuity over ``max_gap_s`` is refused like any other gap.

    Raises:
        MediaError(stage='probe'): 'timestamp_gap'.
    """
    if max(info.duration_s, info.audio_duration_s or 0.0) <= max_gap_s:
        return
    try:
        import av
    except ImportError:  # no PyAV: the decoders fill the gap (bounded per segment), nothing worse
        return
    p = os.fspath(path)
    wanted = {i for i in (info.video_index, info.audio_index) if i is not None}
    try:
        container = open_av(p, "probe", PROBE_TIMEOUT_S)
    except MediaError as e:
        if e.reason == "unsupported_container":
            raise
        return  # PyAV cannot read it (the probe fell back to ffprobe): the decoders decide
    with container:
        streams = [s for s in container.streams if s.index in wanted]
        for s in container.streams:
            if s.index not in wanted:
                s.discard = av.stream.Discard.all
        prev: dict[int, Fraction] = {}  # each stream's last packet time
        try:
            for packet in container.demux(streams):
                ts = packet.dts if packet.dts is not None else packet.pts
                if ts is None or packet.time_base is None:
                    continue
                t = ts * packet.time_base
                # MP4 stores a gap as the duration of the packet before it: check both
                jump = max(t - prev.get(packet.stream_index, t), (packet.duration or 0) * packet.time_base)
                if jump > max_gap_s:
                    kind = container.streams[packet.stream_index].type
                    raise MediaError("probe", "timestamp_gap",
                                     f"Expected {kind} timestamps without gaps over {max_gap_s:g} s. "
                                     f"Got {float(jump):.1f} s at {float(t):.1f} s.", p)
                prev[packet.stream_index] = max(t, prev.get(packet.stream_index, t))
        except av.error.FFmpegError:
            return  # a damaged file: the decoders decide
