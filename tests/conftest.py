"""Shared test fixtures: the committed media in tests/data, and generators of derived media.

Derived inputs are made with ffmpeg at test time (never committed). Use them two ways:

- the session fixture ``media`` (a :class:`MediaFactory`): ``media.vfr()``, ``media.fps30()``,
  ``media.rotated()``, ``media.av1()``, ... — each built once per session and cached;
- the plain ``make_*(dst, ...)`` functions below, e.g. ``make_vfr(tmp_path / "v.mp4")``.

Every generator returns the ``Path`` it wrote. Sources default to ``tests/data/00015.mp4``
(224², 25 fps H.264, AAC 16 kHz mono, 6.96 s); clips are cut to a few seconds to stay fast.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"
CLIP = DATA_DIR / "00015.mp4"
#: A file name an option parser or a shell would misread; tests must still open it.
HOSTILE_NAME = "-i $(touch PWNED) 'q\"uo;te` ü 名.mp4"


def ffmpeg(*args) -> None:
    """Run ``ffmpeg -y <args>`` (list arguments, no shell); raise with stderr on failure."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")


def has_encoder(name: str) -> bool:
    out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in out.splitlines() if line.startswith(" "))


def _x264(crf: int = 18) -> list:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-crf", str(crf), "-pix_fmt", "yuv420p"]


def make_30fps(dst, src=CLIP, seconds: float = 2.0) -> Path:
    """CFR 30 fps re-encode (H.264 + the source audio)."""
    ffmpeg("-i", f"file:{src}", "-t", seconds, "-vf", "fps=30", *_x264(), "-c:a", "aac",
           f"file:{dst}")
    return Path(dst)


def make_vfr(dst, src=CLIP, seconds: float = 2.0) -> Path:
    """Variable frame rate H.264: keeps frames 0-9, then every 3rd (timestamps kept, no audio)."""
    ffmpeg("-i", f"file:{src}", "-t", seconds, "-vf", r"select='lt(n\,10)+not(mod(n\,3))'",
           "-fps_mode", "vfr", *_x264(), "-an", f"file:{dst}")
    return Path(dst)


def make_rotated(dst, src=CLIP, degrees: int = 90, seconds: float = 2.0) -> Path:
    """Stream copy with a ``rotate`` tag (display matrix); pixels untouched."""
    ffmpeg("-i", f"file:{src}", "-t", seconds, "-c", "copy", "-metadata:s:v", f"rotate={degrees}",
           f"file:{dst}")
    return Path(dst)


def make_testsrc(dst, seconds: float = 10.0, size: str = "64x48", fps: float = 25,
                 audio: bool = False) -> Path:
    """Synthetic H.264 clip (lavfi testsrc2), any length; optional 16 kHz sine audio."""
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={seconds}",
                 "-c:a", "aac"]
    ffmpeg(*args, *_x264(23), "-g", "50", f"file:{dst}")
    return Path(dst)


def make_audio(dst, src=CLIP, rate: int = 8000, channels: int = 1, codec: str = "pcm_s16le") -> Path:
    """Audio-only file (wav by default) at ``rate`` Hz with ``channels`` channels."""
    ffmpeg("-i", f"file:{src}", "-vn", "-ar", rate, "-ac", channels, "-c:a", codec, f"file:{dst}")
    return Path(dst)


def make_audio_only(dst, src=CLIP) -> Path:
    """An .mp4 with only its AAC audio stream."""
    ffmpeg("-i", f"file:{src}", "-vn", "-c:a", "copy", f"file:{dst}")
    return Path(dst)


def make_video_only(dst, src=CLIP, seconds: float = 2.0) -> Path:
    """An .mp4 with only its video stream."""
    ffmpeg("-i", f"file:{src}", "-t", seconds, "-an", "-c:v", "copy", f"file:{dst}")
    return Path(dst)


def make_av1(dst, src=CLIP, seconds: float = 1.0) -> Path:
    """A codec decord cannot open: AV1 (SVT-AV1 or libaom), else MPEG-4 part 2 in .avi."""
    if has_encoder("libsvtav1"):
        codec = ["-c:v", "libsvtav1", "-preset", "12", "-svtav1-params", "verbosity=0"]
    elif has_encoder("libaom-av1"):
        codec = ["-c:v", "libaom-av1", "-cpu-used", "8", "-crf", "40"]
    else:
        codec = ["-c:v", "mpeg4", "-q:v", "3"]
    ffmpeg("-i", f"file:{src}", "-t", seconds, *codec, "-pix_fmt", "yuv420p", "-an", f"file:{dst}")
    return Path(dst)


def make_10bit(dst, src=CLIP, seconds: float = 1.0) -> Path:
    """10-bit 4:2:0 H.264 (High 10)."""
    ffmpeg("-i", f"file:{src}", "-t", seconds, "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p10le", "-an", f"file:{dst}")
    return Path(dst)


def make_tiny(dst, src=CLIP, side: int = 32, seconds: float = 1.0) -> Path:
    """A ``side``×``side`` clip (too small for face detection)."""
    ffmpeg("-i", f"file:{src}", "-t", seconds, "-vf", f"scale={side}:{side}", *_x264(), "-c:a", "aac",
           f"file:{dst}")
    return Path(dst)


def make_one_frame(dst, src=CLIP) -> Path:
    """A single-frame video (0.04 s) with its audio."""
    ffmpeg("-i", f"file:{src}", "-frames:v", "1", "-t", "0.04", *_x264(), "-c:a", "aac",
           f"file:{dst}")
    return Path(dst)


def make_zero_bytes(dst) -> Path:
    Path(dst).write_bytes(b"")
    return Path(dst)


def make_text_as_mp4(dst) -> Path:
    Path(dst).write_text("this is not a video\n" * 20)
    return Path(dst)


def make_truncated_mp4(dst, src=CLIP, keep: float = 0.4) -> Path:
    """Header intact (``+faststart``), media data cut: probes fine, decoding comes up short."""
    full = Path(dst).with_name(Path(dst).stem + ".full.mp4")
    ffmpeg("-i", f"file:{src}", "-c", "copy", "-movflags", "+faststart", f"file:{full}")
    data = full.read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    full.unlink()
    return Path(dst)


def make_hostile_copy(dst_dir, src=CLIP, name: str = HOSTILE_NAME) -> Path:
    """Copy ``src`` to a file called ``name`` (leading '-', quotes, $(...), unicode)."""
    dst = Path(dst_dir) / name
    shutil.copyfile(src, dst)
    return dst


class MediaFactory:
    """Session-cached derived media: ``media.vfr()`` builds once, then returns the same path."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._cache: dict = {}

    def _get(self, key: str, build):
        if key not in self._cache:
            self._cache[key] = build(self.root / key)
        return self._cache[key]

    def fps30(self): return self._get("fps30.mp4", make_30fps)
    def vfr(self): return self._get("vfr.mp4", make_vfr)
    def rotated(self, degrees: int = 90):
        return self._get(f"rot{degrees}.mp4", lambda d: make_rotated(d, degrees=degrees))
    def av1(self): return self._get("av1.mp4", make_av1)
    def ten_bit(self): return self._get("10bit.mp4", make_10bit)
    def tiny(self): return self._get("tiny32.mp4", make_tiny)
    def one_frame(self): return self._get("one_frame.mp4", make_one_frame)
    def audio_only(self): return self._get("audio_only.mp4", make_audio_only)
    def video_only(self): return self._get("video_only.mp4", make_video_only)
    def zero_bytes(self): return self._get("zero.mp4", make_zero_bytes)
    def text_as_mp4(self): return self._get("text.mp4", make_text_as_mp4)
    def truncated(self): return self._get("truncated.mp4", make_truncated_mp4)
    def hostile(self): return self._get("hostile", lambda d: make_hostile_copy(self.root))

    def wav(self, rate: int = 8000, channels: int = 1):
        return self._get(f"a{rate}x{channels}.wav", lambda d: make_audio(d, rate=rate, channels=channels))

    def testsrc(self, seconds: float = 10.0, size: str = "64x48", fps: float = 25, audio: bool = False):
        key = f"testsrc_{seconds}_{size}_{fps}_{int(audio)}.mp4"
        return self._get(key, lambda d: make_testsrc(d, seconds, size, fps, audio))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data`` (committed real media, see its README.md)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> MediaFactory:
    """Derived media built on demand into one session temp dir (see :class:`MediaFactory`)."""
    return MediaFactory(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """A real radio dataset: ``preprocess.source.run_source`` (the per-clip work of
    ``radio preprocess``) on two committed interview clips, written once per session."""
    from preprocess import source

    out = tmp_path_factory.mktemp("sample_dataset")
    cfg = source.PreprocessConfig()
    backend = source.load_backend(cfg)
    for name, speaker in (("00015.mp4", "spk15"), ("00086.mp4", "spk86")):
        res = source.run_source({"uri": str(DATA_DIR / name), "speaker_id": speaker, "split": "train"},
                                cfg, backend, str(out))
        assert res["status"] == "rows", res
    return out


@pytest.fixture(scope="session", autouse=True)
def _shard_check_cache(tmp_path_factory):
    """Footer-check caches (``preprocess.catalog``) in a session temp dir, not ~/.cache."""
    import os

    saved = os.environ.get("RADIO_CACHE_DIR")
    os.environ["RADIO_CACHE_DIR"] = str(tmp_path_factory.mktemp("radio_cache"))
    yield
    if saved is None:
        os.environ.pop("RADIO_CACHE_DIR", None)
    else:
        os.environ["RADIO_CACHE_DIR"] = saved


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (the CPU tests' timings and float results stay put on a
    shared machine); restores the count after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_csv(path: Path, rows: list[list], header=("uri", "start_s", "end_s")) -> Path:
    """A CSV manifest (default columns: a clip range's) at ``path``."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path
