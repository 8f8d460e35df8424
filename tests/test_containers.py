"""Only media containers are opened, and only from allowed places (issue 9, item 3).

A 129-byte HLS playlist (``evil.m3u8``, or the same text named ``.mp4``) listing a ``.ts`` outside
the corpus once became a row of that file's frames: the in-process decoder refused it, the
ffprobe/ffmpeg fallback followed it. Every open (PyAV and both CLIs) now carries the container
allow-list and the file protocol only; such inputs are rejects ``unsupported_container``.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIP, ffmpeg
from preprocess import audio, media, shards, source, uri, video
from preprocess.media import MediaError


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("containers")
    outside, corpus = root / "outside", root / "corpus"
    outside.mkdir()
    corpus.mkdir()
    secret = outside / "secret.ts"
    ffmpeg("-i", f"file:{CLIP}", "-t", "2", "-c", "copy", "-f", "mpegts", f"file:{secret}")
    playlist = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
                f"#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n")
    out = {"secret": secret}
    for name in ("evil.m3u8", "evil.mp4"):
        (corpus / name).write_text(playlist)
        out[name] = corpus / name
    (corpus / "list.mp4").write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    out["concat"] = corpus / "list.mp4"
    ffmpeg("-i", f"file:{CLIP}", "-frames:v", "1", f"file:{corpus / 'still.png'}")
    out["image"] = corpus / "still.png"
    return out


@pytest.mark.parametrize("name", ["evil.m3u8", "evil.mp4", "concat", "image"])
@pytest.mark.parametrize("backend", ["auto", "pyav", "ffprobe"])
def test_probe_refuses_playlists_lists_and_images(evil, name, backend):
    with pytest.raises(MediaError) as e:
        media.probe(evil[name], backend=backend)
    assert (e.value.stage, e.value.reason) == ("probe", "unsupported_container"), str(e.value)


@pytest.mark.parametrize("name", ["evil.m3u8", "evil.mp4"])
def test_every_open_has_the_allow_list_behind_the_first_bytes_check(evil, name):
    """Past the cheap first-bytes check, libavformat's whitelist refuses the playlist itself:
    PyAV, ffprobe, and the ffmpeg audio and video pipes."""
    p = str(evil[name])
    info = media.probe(evil["secret"])  # what a lying probe would have said
    calls = {
        "open_av": lambda: media.open_av(p, "probe"),
        "ffprobe": lambda: media._probe_ffprobe(p),
        "audio_cli": lambda: audio._decode_ffmpeg(p, 16000, info, 1, audio._MonoSink(1, 0, None)),
        "video_cli": lambda: list(video._ffmpeg_frames(p, info, 25, 16, (224, 224))),
        "audio_pyav": lambda: audio._decode_pyav(p, 16000, info, 1, audio._MonoSink(1, 0, None)),
        "video_pyav": lambda: list(video._pyav_frames(p, info, 25, 16, (224, 224))),
    }
    for what, call in calls.items():
        with pytest.raises((MediaError, video._PyAVFailed)) as e:
            call()
        reason = getattr(e.value, "reason", "undecodable")
        if name == "evil.mp4" and what in ("open_av", "audio_pyav", "video_pyav"):
            # the wheel's FFmpeg 8 no longer takes a playlist named .mp4 for HLS: it cannot be
            # parsed at all ('auto' then asks the CLI, whose FFmpeg 5.1 recognises it: refused)
            assert reason in ("unsupported_container", "undecodable"), (what, str(e.value))
        else:
            assert reason == "unsupported_container", (what, str(e.value))


def test_a_device_is_not_opened():
    with pytest.raises(MediaError) as e:
        media.probe("/dev/zero")
    assert e.value.reason == "unsupported_container"


def test_allowed_containers_still_open(tmp_path):
    for ext, args in ((".mkv", ["-c", "copy"]), (".ts", ["-c", "copy"]), (".avi", ["-c:v", "mpeg4", "-c:a", "mp3"]),
                      (".webm", ["-c:v", "libvpx", "-c:a", "libopus", "-b:v", "200k"])):
        p = tmp_path / f"c{ext}"
        ffmpeg("-i", f"file:{CLIP}", "-t", "0.5", *args, f"file:{p}")
        for backend in ("pyav", "ffprobe"):
            info = media.probe(p, backend=backend)
            assert info.has_video and info.has_audio, (ext, backend)
        assert len(video.read_frames(p, info)) == info.n_frames_25


@pytest.mark.parametrize("name", ["evil.m3u8", "evil.mp4"])
def test_playlist_is_a_reject_with_a_done_marker(evil, name, tmp_path):
    cfg = source.PreprocessConfig()
    ds = str(tmp_path / "ds")
    result = source.run_source({"uri": str(evil[name])}, cfg, backend=None, dataset=ds)
    assert result["status"] == "rejected" and result["frames"] == 0
    assert result["reject_reasons"] == ["unsupported_container"]
    assert not os.path.exists(shards.rows_uri(ds, result["source_id"]))
    assert json.loads(Path(shards.done_uri(ds, result["source_id"])).read_text())["status"] == "rejected"


@contextlib.contextmanager
def _http_server(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_sources_only_when_allowed_and_under_the_size_cap(tmp_path):
    data = CLIP.read_bytes()
    (tmp_path / "v.mp4").write_bytes(data)
    with _http_server(tmp_path) as base:
        src = f"{base}/v.mp4"
        with pytest.raises(MediaError) as e:
            with uri.local_copy(src, schemes=source.InputConfig().schemes):
                pass
        assert (e.value.stage, e.value.reason) == ("probe", "unsupported_scheme")
        with pytest.raises(MediaError) as e:
            with uri.local_copy(src, max_bytes=len(data) - 1, schemes=["http"]):
                pass
        assert e.value.reason == "too_large"
        with uri.local_copy(src, max_bytes=len(data), schemes=["http"]) as local:
            assert Path(local).read_bytes() == data
            assert media.probe(local).n_frames_25 == 174
    with pytest.raises(MediaError) as e:  # local files have the same cap
        with uri.local_copy(str(CLIP), max_bytes=1000):
            pass
    assert e.value.reason == "too_large"


def test_copies_of_remote_sources_that_killed_workers_left_are_removed(tmp_path, monkeypatch):
    """A worker killed while it held a copy of a remote source (OOM, SIGTERM to the job) left it in
    $TMPDIR for good (up to max_source_bytes each); the next job's workers remove such copies and
    never one in use."""
    import signal
    import subprocess
    import sys
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))       # gettempdir() caches its answer
    data = CLIP.read_bytes()
    (tmp_path / "v.mp4").write_bytes(data)
    with _http_server(tmp_path) as base:
        with uri.local_copy(f"{base}/v.mp4", schemes=["http"]) as local:
            assert Path(local).parent.name.startswith(uri.COPY_PREFIX)
            assert uri.remove_stale_copies() == [] and Path(local).read_bytes() == data   # in use: kept
        assert not Path(local).exists()
    child = subprocess.Popen([sys.executable, "-c",
                              "import os, signal, sys; from preprocess import uri, writer\n"
                              "with writer.locked_temp_dir(uri.COPY_PREFIX) as d:\n"
                              "    open(os.path.join(d, 'media.mp4'), 'wb').write(b'x' * 1000)\n"
                              "    print(d, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n"],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, TMPDIR=str(tmp_path)),
                             cwd=str(Path(__file__).resolve().parents[1]))
    left = child.stdout.readline().strip()
    assert child.wait(timeout=60) == -signal.SIGKILL and Path(left).is_dir()
    assert uri.remove_stale_copies() == [left] and not Path(left).exists()
