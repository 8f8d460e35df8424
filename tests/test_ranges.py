"""Clip ranges in preprocess manifests: ``start_s``/``end_s`` make one manifest line a range of its
video, with its own source id, rows, rejects and done marker (``--resume`` per range).

The contract checked here: a range's frames are the whole decode's frames of those indexes (bit for
bit, PyAV seeking to the keyframe before the range; the ffmpeg pipe and decord too), its mel rows and
samples are the whole track's, rows keep absolute ``start_frame``s, and a manifest with a bad or
overlapping range fails before any work (``file:line: reason``, exit 2). Odd media are made in
tmp_path with ffmpeg from the committed clip.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import CLIP, ffmpeg, write_csv
from pipelines import preprocess as pipeline
from preprocess import audio, media, schema, shards, source, sources, video
from preprocess.errors import UserError

ONE_WORKER = ["--direct_num_workers=1"]


def listed(path: Path) -> list[dict]:
    return list(sources.list_sources(str(path)))


@pytest.fixture(scope="module")
def gop(tmp_path_factory) -> Path:
    """The committed clip re-encoded with a keyframe every 20 frames and B-frames (the committed one
    has a single keyframe, where every seek lands at 0), its AAC sound copied."""
    d = tmp_path_factory.mktemp("gop")
    out = d / "gop.mp4"
    ffmpeg("-i", f"file:{CLIP}", "-c:v", "libx264", "-preset", "veryfast", "-g", 20, "-bf", 2,
           "-pix_fmt", "yuv420p", "-c:a", "copy", f"file:{out}")
    return out


@pytest.fixture(scope="module")
def backend():
    return source.load_backend(source.PreprocessConfig())


# ------------------------------------------------------------------------------- the manifest
@pytest.mark.parametrize("start,end,reason", [
    ("abc", "", "'start_s' must be a number of seconds"),
    ("", "x1", "'end_s' must be a number of seconds"),
    ("-1", "2", "'start_s' must be >= 0"),
    ("nan", "2", "'start_s' must be a finite number"),
    ("1", "inf", "'end_s' must be a finite number"),
    ("3", "3", "'end_s' (3) must be after 'start_s' (3)"),
    ("3", "2", "'end_s' (2) must be after 'start_s' (3)"),
    ("0.01", "0.02", "holds no 25 fps frame"),
])
def test_a_bad_range_is_one_line_naming_file_and_line(tmp_path, start, end, reason):
    m = write_csv(tmp_path / "m.csv", [[str(CLIP), "0", "2"], [str(CLIP), start, end]])
    with pytest.raises(UserError) as e:
        listed(m)
    msg = str(e.value)
    assert msg.startswith(f"{m}:3: ") and reason in msg and "\n" not in msg, msg


def test_json_ranges_are_checked_alike(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"uri": str(CLIP), "start_s": True}) + "\n")
    with pytest.raises(UserError, match=r"m.jsonl:1: 'start_s' must be a number"):
        listed(m)
    m.write_text(json.dumps({"uri": str(CLIP), "start_s": 1, "end_s": 2.5}) + "\n"
                 + json.dumps({"uri": str(CLIP), "start_s": "2.5", "end_s": None}) + "\n")
    recs = listed(m)
    assert [(r["start_s"], r["end_s"]) for r in recs] == [(1.0, 2.5), (2.5, None)]


def test_overlapping_ranges_of_one_video_are_refused_naming_both_lines(tmp_path):
    m = write_csv(tmp_path / "m.csv", [[str(CLIP), "0", "2"], [str(CLIP), "4", ""], [str(CLIP), "1.5", "3"]])
    with pytest.raises(UserError) as e:
        listed(m)
    msg = str(e.value)
    assert msg.startswith(f"{m}:4: ") and "line 2" in msg and "two rows" in msg, msg
    # a line without a range is the whole video: it overlaps every range of it
    m = write_csv(tmp_path / "w.csv", [[str(CLIP), "", ""], [str(CLIP), "5", "6"]])
    with pytest.raises(UserError, match=r"w.csv:3: .*overlaps line 2's whole video"):
        listed(m)
    # an open end overlaps what comes after it, named by file URI spelled otherwise too
    m = write_csv(tmp_path / "o.csv", [[str(CLIP), "2", ""], [f"file://{CLIP}", "6", "6.5"]])
    with pytest.raises(UserError, match=r"o.csv:3: .*overlaps line 2's range 2-end s"):
        listed(m)


def test_the_same_range_twice_is_a_duplicate_and_adjacent_ranges_are_fine(tmp_path):
    m = write_csv(tmp_path / "m.csv", [[str(CLIP), "0", "2.4"], [str(CLIP), "2.4", "4.8"],
                                       [str(CLIP), "2.40", "4.80"], [str(CLIP), "4.8", ""]])
    recs = listed(m)
    assert len(recs) == 3    # line 4 is line 3 again: dropped with a warning, as duplicate URIs are
    assert [source.range_of(r) for r in recs] == [(0, 60), (60, 120), (120, None)]
    m = write_csv(tmp_path / "l.csv", [[str(CLIP), "0", "2", "a"], [str(CLIP), "0", "2", "b"]],
                  header=("uri", "start_s", "end_s", "split"))
    with pytest.raises(UserError, match=r"l.csv:3: repeats line 2's .* another split"):
        listed(m)


def test_source_ids_a_line_without_range_keeps_its_id(tmp_path):
    m = write_csv(tmp_path / "m.csv", [[str(CLIP), "", ""], [str(tmp_path / "b.mp4"), "0", ""],
                                       [str(tmp_path / "c.mp4"), "1", "2"], [str(tmp_path / "c.mp4"), "2.0", ""]])
    a, b, c1, c2 = listed(m)
    assert source.source_id_of(a) == schema.source_id(str(CLIP))          # as before ranges existed
    assert source.source_id_of(b) == schema.source_id(str(tmp_path / "b.mp4"))   # 0 to the end: whole
    ids = {source.source_id_of(c1), source.source_id_of(c2), schema.source_id(str(tmp_path / "c.mp4"))}
    assert len(ids) == 3
    assert source.source_id_of(c1) == schema.source_id(str(tmp_path / "c.mp4"), (25, 50))   # stable
    # frames snap exactly: frame k belongs to the range where it starts
    assert sources.frame_range(2.4, 4.8) == (60, 120)
    assert sources.frame_range(0.04, 0.08) == (1, 2) and sources.frame_range(0.041, 0.12) == (2, 3)


def test_a_bad_range_stops_the_cli_before_any_work(tmp_path):
    m = write_csv(tmp_path / "m.csv", [[str(CLIP), "2", "1"]])
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "radio.cli", "preprocess", "--input", str(m), "--output", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and f"{m}:2: 'end_s' (1) must be after 'start_s' (2)" in lines[0], res.stderr
    assert not out.exists()


# ------------------------------------------------------------------------- frames and samples
@pytest.mark.parametrize("which", ["committed", "gop"])
@pytest.mark.parametrize("be", ["pyav", "ffmpeg", "decord", "auto"])
def test_range_frames_are_the_whole_decodes(gop, which, be, caplog):
    path = str(CLIP if which == "committed" else gop)
    info = media.probe(path)
    whole = video.read_frames(path, info, backend=be)
    assert len(whole) == 174
    caplog.set_level(logging.DEBUG, logger="preprocess.video")
    got = []
    for a, b in [(0, 60), (60, 120), (120, None)]:     # 0-2.4 s, 2.4-4.8 s, 4.8 s to the end
        part = np.concatenate(list(video.iter_frames(path, info, backend=be, chunk=16, first=a, stop=b)))
        assert part.shape == whole[a:b].shape
        assert np.array_equal(part, whole[a:b]), (be, a, b)
        got.append(part)
    assert np.array_equal(np.concatenate(got), whole)
    one = np.concatenate(list(video.iter_frames(path, info, backend=be, first=173, stop=500)))
    assert np.array_equal(one, whole[173:])              # past the end: to the end
    if be in ("pyav", "auto") and which == "gop":       # the seek landed on a keyframe, not at 0
        assert any("from a keyframe at 3.2" in r.getMessage() for r in caplog.records), caplog.text


def test_range_samples_and_mel_rows_are_the_whole_tracks(gop, tmp_path):
    """Mono AAC (the clip), and 44.1 kHz stereo made from it; a 25 s loop crosses the mel grid's
    10 s blocks. Samples and float32 mel rows of a range equal the whole track's, bit for bit."""
    stereo = tmp_path / "stereo.mp4"
    ffmpeg("-i", f"file:{gop}", "-c:v", "copy", "-c:a", "aac", "-ar", 44100, "-ac", 2, f"file:{stereo}")
    loop = tmp_path / "loop.mp4"
    ffmpeg("-stream_loop", 3, "-i", f"file:{gop}", "-c", "copy", "-t", 25, f"file:{loop}")
    for path, spans in [(gop, [(0, 60), (60, 120), (120, 174), (57, 58)]),
                        (stereo, [(60, 120), (120, 174)]),
                        (loop, [(230, 270), (240, 500), (500, 625), (260, 300)])]:
        info = media.probe(path)
        with audio.decode_audio(path, info, max_seconds=info.duration_s + 1) as whole:
            for a, b in spans:
                with audio.decode_audio(path, info, max_seconds=info.duration_s + 1,
                                        window=audio.frames_window(a, b)) as part:
                    assert np.array_equal(part.read(a * 640, b * 640), whole.read(a * 640, b * 640))
                    for x, y in [(a, b), (a, a + 1), (max(a, b - 7), b)]:   # segments of any start
                        assert np.array_equal(part.mel_rows(4 * x, 4 * y), whole.mel_rows(4 * x, 4 * y)), (path, x, y)
                    if (a, b) == (260, 300):   # a range in the middle keeps only its blocks' samples
                        assert (part.offset, len(part)) == (144000, 336000) and len(whole) > 390000
    with audio.decode_audio(loop) as whole:   # the grid: any block of rows is the same rows
        assert np.array_equal(whole.mel_rows(990, 1010), whole.mel_rows(0, 1500)[990:1010])


# ------------------------------------------------------------------------------ rows, end to end
def rows_of(ds: str) -> list[dict]:
    return sorted((schema.decode_segment(r) for s in shards.list_shards(ds) for r in shards.read_shard(s).to_pylist()),
                  key=lambda r: r["start_frame"])


def reference_mel(path) -> np.ndarray:
    with audio.decode_audio(path) as t:
        return t.mel_rows(0, 10**6)


def test_ranges_end_to_end_rows_resume_and_labels(gop, tmp_path, backend):
    whole_ds = str(tmp_path / "whole")
    res = source.run_source({"uri": str(gop)}, source.PreprocessConfig(), backend, whole_ds)
    assert res["status"] == "rows"
    whole_rows = rows_of(whole_ds)
    m = write_csv(tmp_path / "m.csv", [[str(gop), "0", "2.4", "s1", "train"], [str(gop), "2.4", "4.8", "s1", "eval"],
                                       [str(gop), "4.8", "", "s1", "test"]],
                  header=("uri", "start_s", "end_s", "speaker_id", "split"))
    ds = str(tmp_path / "ranges")
    summary = pipeline.run(str(m), ds, ONE_WORKER, run_id="r1")
    assert summary["inputs"] == 3 and summary["sources_with_rows"] == 3 and summary["counts_add_up"], summary
    rows = rows_of(ds)
    items = listed(m)
    ids = [source.source_id_of(it) for it in items]
    assert len(set(ids)) == 3 and schema.source_id(str(gop)) not in ids
    assert sorted(shards.done_source_ids(ds)) == sorted(ids)
    spans = {}
    for sid, it in zip(ids, items):
        marker = json.loads(Path(shards.done_uri(ds, sid)).read_text())
        assert marker["range"]["first_frame"] == source.range_of(it)[0]
        spans[sid] = (marker["range"]["first_frame"], marker["range"]["stop_frame"])
    assert sorted(spans.values()) == [(0, 60), (60, 120), (120, 174)]
    ref = reference_mel(gop)
    for r in rows:
        a, b = spans[r["source_id"]]
        s, n = r["start_frame"], r["n_frames"]
        assert a <= s and s + n <= b                          # absolute, inside its range
        assert r["split"] == {0: "train", 60: "eval", 120: "test"}[a] and r["speaker_id"] == "s1"
        assert r["clip_id"] == schema.clip_id(str(gop), s)
        assert np.array_equal(r["mel"], ref[4 * s: 4 * (s + n)].astype(np.float16).astype(np.float32))
        for w in whole_rows:     # the whole run's rows of the same frames hold the same mel
            lo, hi = max(s, w["start_frame"]), min(s + n, w["start_frame"] + w["n_frames"])
            if lo < hi:
                assert np.array_equal(r["mel"][4 * (lo - s): 4 * (hi - s)],
                                      w["mel"][4 * (lo - w["start_frame"]): 4 * (hi - w["start_frame"])])
    assert sum(r["n_frames"] for r in rows) >= 170
    # --resume redoes only the range whose marker is gone
    os.remove(shards.done_uri(ds, ids[1]))
    again = pipeline.run(str(m), ds, ONE_WORKER, run_id="r2", resume=True)
    assert (again["inputs"], again["skipped_resume"], again["processed"]) == (3, 2, 1), again
    assert rows_of(ds) and [r["clip_id"] for r in rows_of(ds)] == [r["clip_id"] for r in rows]


def test_late_audio_range_keeps_the_whole_files_timing(tmp_path, backend):
    """Sound 0.5 s after the picture: sample 0 is still the first video frame, so a range's first
    row starts at the first frame with sound (11-13) as the whole file's does, with its mel."""
    base = tmp_path / "base.mp4"
    ffmpeg("-i", f"file:{CLIP}", "-t", 4, "-c:v", "libx264", "-preset", "veryfast", "-g", 20,
           "-pix_fmt", "yuv420p", "-c:a", "copy", f"file:{base}")
    late = tmp_path / "late.mp4"
    ffmpeg("-i", f"file:{base}", "-itsoffset", 0.5, "-i", f"file:{base}", "-map", "0:v", "-map", "1:a",
           "-c", "copy", f"file:{late}")
    info = media.probe(late)
    whole = video.read_frames(late, info, backend="pyav")
    cfg = source.PreprocessConfig()
    ds_w, ds_r = str(tmp_path / "w"), str(tmp_path / "r")
    source.run_source({"uri": str(late)}, cfg, backend, ds_w)
    first_row = rows_of(ds_w)[0]
    assert 11 <= first_row["start_frame"] <= 13
    for a, b in [(0.0, 2.2), (2.2, None)]:
        it = {"uri": str(late), "start_s": a, "end_s": b}
        res = source.run_source(it, cfg, backend, ds_r)
        assert res["status"] == "rows", res
        f, s = source.range_of(it) or (0, None)
        part = np.concatenate(list(video.iter_frames(late, info, backend="pyav", first=f, stop=s)))
        assert np.array_equal(part, whole[f:s])
    rows = rows_of(ds_r)
    assert rows[0]["start_frame"] == first_row["start_frame"]
    ref = reference_mel(late)
    for r in rows:
        s, n = r["start_frame"], r["n_frames"]
        assert np.array_equal(r["mel"], ref[4 * s: 4 * (s + n)].astype(np.float16).astype(np.float32))
    assert np.array_equal(rows[0]["mel"], first_row["mel"][: len(rows[0]["mel"])])


def test_a_range_past_the_end_is_a_reject_and_limits_count_the_range(tmp_path, backend):
    cfg = source.PreprocessConfig()
    ds = str(tmp_path / "ds")
    res = source.run_source({"uri": str(CLIP), "start_s": 8.0, "end_s": 9.0}, cfg, backend, ds)
    assert res["status"] == "rejected" and res["reject_reasons"] == ["range_past_end"], res
    rej = pq.read_table(shards.rejects_uri(ds, res["source_id"])).to_pylist()
    assert rej[0]["source_id"] == res["source_id"] and "frame 200" in rej[0]["message"]
    assert "174 frames" in rej[0]["message"]
    tail = source.run_source({"uri": str(CLIP), "start_s": 5.0, "end_s": 60.0}, cfg, backend, ds)
    assert tail["status"] == "rows" and tail["range"]["stop_frame"] == 174, tail    # ends with the video
    assert all(r["start_frame"] >= 125 for r in rows_of(ds))
    # limits.max_duration_s: the file is too long, a range within the limit is not
    short = source.PreprocessConfig(limits=source.LimitsConfig(max_duration_s=3.0))
    assert source.run_source({"uri": str(CLIP)}, short, backend, str(tmp_path / "a"))["reject_reasons"] == ["too_long"]
    ok = source.run_source({"uri": str(CLIP), "start_s": 1.0, "end_s": 3.5}, short, backend, str(tmp_path / "b"))
    assert ok["status"] == "rows", ok
    long = source.run_source({"uri": str(CLIP), "start_s": 1.0}, short, backend, str(tmp_path / "c"))
    assert long["reject_reasons"] == ["too_long"], long
    rej = pq.read_table(shards.rejects_uri(str(tmp_path / "c"), long["source_id"])).to_pylist()
    assert "clip range" in rej[0]["message"]
    # the checks protecting the worker still run on the file (max_pixels)
    tiny = source.PreprocessConfig(limits=source.LimitsConfig(max_pixels=1000))
    big = source.run_source({"uri": str(CLIP), "start_s": 1.0, "end_s": 2.0}, tiny, backend, str(tmp_path / "d"))
    assert big["reject_reasons"] == ["too_large"], big
