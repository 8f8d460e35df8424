"""A corpus of bad and odd inputs: every file ends as rows or a reject with a clear reason.

The corpus is generated into a temp folder with ffmpeg (nothing committed). Each case runs through
``preprocess.source.run_source`` (the per-video work, fast), then the whole corpus goes through the
Beam pipeline once: counts add up, nothing crashes the job, and no file name reaches a shell.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import (CLIP, DATA_DIR, HOSTILE_NAME, _x264, ffmpeg, make_10bit, make_audio_only,
                      make_av1, make_testsrc, make_text_as_mp4, make_tiny,
                      make_truncated_mp4, make_vfr, make_video_only, make_zero_bytes)
from preprocess import schema, shards, source

ROWS = "rows"
STAGES = {"probe", "decode", "audio", "faces", "align", "track", "encode", "write"}
#: hostile names beside conftest's all-in-one HOSTILE_NAME (each also ends in .mp4)
HOSTILE = ["with spaces .mp4", "it's \"quoted\".mp4", "-leading-dash.mp4", "ünïcödé 名前.mp4",
           "$(touch PWNED).mp4", "`touch PWNED2`.mp4", "semi;colon|pipe&amp>redir.mp4", HOSTILE_NAME]


def _with_audio(video: Path, dst: Path, seconds: float = 2.0) -> Path:
    """Mux the committed clip's audio under a video stream (stream copy)."""
    ffmpeg("-i", f"file:{video}", "-i", f"file:{CLIP}", "-t", seconds, "-map", "0:v", "-map", "1:a",
           "-c:v", "copy", "-c:a", "aac", f"file:{dst}")
    video.unlink()
    return dst


def make_two_faces(dst: Path) -> Path:
    """Two speakers side by side (hstack): 00015 full size on the left, 00086 shrunk on the right."""
    ffmpeg("-i", f"file:{DATA_DIR / '00015.mp4'}", "-i", f"file:{DATA_DIR / '00086.mp4'}", "-t", 2,
           "-filter_complex", "[0:v]scale=224:224[a];[1:v]scale=150:150,pad=224:224:37:37[b];[a][b]hstack[v]",
           "-map", "[v]", "-map", "0:a", *_x264(), "-c:a", "aac", f"file:{dst}")
    return dst


def make_phone_rotated(dst: Path) -> Path:
    """Like a phone clip: coded pixels turned 90° clockwise (288×224 display -> 224×288 coded) and a
    display matrix that turns them back. Without applying it there is no upright face."""
    tmp = dst.with_name("coded_" + dst.name)
    ffmpeg("-i", f"file:{CLIP}", "-t", 2, "-vf", "pad=288:224:32:0,transpose=1", *_x264(), "-c:a", "aac",
           f"file:{tmp}")
    ffmpeg("-i", f"file:{tmp}", "-c", "copy", "-metadata:s:v", "rotate=90", f"file:{dst}")
    tmp.unlink()
    return dst


def make_8khz(dst: Path) -> Path:
    ffmpeg("-i", f"file:{CLIP}", "-t", 2, "-c:v", "copy", "-ar", 8000, "-c:a", "aac", f"file:{dst}")
    return dst


def make_one_frame_with_audio(dst: Path) -> Path:
    """One video frame beside 2 s of audio."""
    ffmpeg("-i", f"file:{CLIP}", "-t", 2, "-frames:v", 1, *_x264(), "-c:a", "aac", f"file:{dst}")
    return dst


def _cut(dst: Path) -> Path:
    ffmpeg("-i", f"file:{CLIP}", "-t", 2, "-c:v", "copy", "-c:a", "copy", f"file:{dst}")
    return dst


#: name -> (generator, expected): "rows", or the set of acceptable reject reasons of the source
CASES = {
    "zero_bytes": (make_zero_bytes, {"zero_bytes"}),
    "truncated": (lambda d: make_truncated_mp4(d), {"truncated"}),
    "text_as_mp4": (make_text_as_mp4, {"undecodable"}),
    "audio_only": (lambda d: make_audio_only(d), {"no_video_stream"}),
    "video_only": (lambda d: make_video_only(d), {"no_audio_stream"}),
    "no_face": (lambda d: make_testsrc(d, seconds=2, size="320x240", audio=True), {"no_face"}),
    "two_faces": (make_two_faces, {"multiple_faces", "no_usable_segment"}),  # who speaks? (test_source_quality)
    "rotated": (make_phone_rotated, ROWS),
    "tiny_32": (lambda d: make_tiny(d), {"too_small"}),
    "one_frame": (lambda d: make_one_frame_with_audio(d), {"segment_too_short", "no_usable_segment"}),
    "av1": (lambda d: _with_audio(make_av1(d.with_name("v_" + d.name), seconds=2.0), d), ROWS),
    "vfr": (lambda d: _with_audio(make_vfr(d.with_name("v_" + d.name)), d), ROWS),
    "audio_8khz": (make_8khz, ROWS),
    "ten_bit": (lambda d: _with_audio(make_10bit(d.with_name("v_" + d.name), seconds=2.0), d), ROWS),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad corpus")  # a space in the folder name too
    out = {name: gen(d / f"{name}.mp4") for name, (gen, _) in CASES.items()}
    clip = _cut(d / "clip2s.tmp.mp4")
    for i, name in enumerate(HOSTILE):
        out[f"hostile{i}"] = d / name
        shutil.copyfile(clip, d / name)
    clip.unlink()
    return out


@pytest.fixture(scope="module")
def backend():
    cfg = source.PreprocessConfig()
    return cfg, source.load_backend(cfg)


def _rejects(ds: str, sid: str) -> list[dict]:
    uri = shards.rejects_uri(ds, sid)
    return pq.read_table(uri).to_pylist() if os.path.exists(uri) else []


def check_outcome(result: dict, ds: str, expected) -> None:
    """rows XOR a whole-source reject; every reject row is typed, staged and explained."""
    sid = result["source_id"]
    rejects = _rejects(ds, sid)
    for r in rejects:
        assert r["stage"] in STAGES and r["reason"] and r["error_type"] and r["message"], r
        assert r["reason"] != "internal_error", r  # a bad input is data, not a bug
    has_rows = os.path.exists(shards.rows_uri(ds, sid))
    whole = [r for r in rejects if r["segment_index"] is None]
    if expected == ROWS:
        assert result["status"] == "rows" and has_rows and not whole, (result, rejects)
    else:
        assert result["status"] == "rejected" and not has_rows and whole, (result, rejects)
        assert {r["reason"] for r in rejects} <= expected, rejects
    assert os.path.exists(shards.done_uri(ds, sid))


@pytest.mark.parametrize("case", list(CASES))
def test_case_through_run_source(case, corpus, backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, be = backend
    ds = str(tmp_path / "ds")
    res = source.run_source({"uri": str(corpus[case])}, cfg, be, ds)
    check_outcome(res, ds, CASES[case][1])
    if res["status"] != "rows":
        return
    rows = [r for s in shards.list_shards(ds) for r in shards.read_shard(s).to_pylist()]
    segs = [schema.decode_segment(r) for r in rows]
    for seg in segs:
        t = seg["n_frames"]
        assert seg["frames"].shape == (t, 192, 192, 3) and seg["mel"].shape == (4 * t, 80)
    if case == "rotated":  # display size, upright face: eyes above the mouth in the crop
        assert (rows[0]["source_width"], rows[0]["source_height"]) == (288, 224)
        lm = segs[0]["landmarks"]
        assert (lm[:, 36:48, 1].mean(1) < lm[:, 48:68, 1].mean(1)).all()
    if case == "vfr":  # normalised to 25 fps CFR over its 2 s, not rejected
        assert 45 <= sum(s["n_frames"] for s in segs) <= 51
    assert not (tmp_path / "PWNED").exists()


def test_hostile_name_through_run_source(corpus, backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, be = backend
    ds = str(tmp_path / "ds")
    path = corpus[f"hostile{HOSTILE.index(HOSTILE_NAME)}"]
    res = source.run_source({"uri": str(path)}, cfg, be, ds)
    check_outcome(res, ds, ROWS)
    (row,) = [r for s in shards.list_shards(ds) for r in shards.read_shard(s, ["source_uri"]).to_pylist()]
    assert row["source_uri"] == str(path)  # kept exactly
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # nothing created in the working directory


def test_whole_corpus_through_the_pipeline(corpus, tmp_path, monkeypatch):
    from pipelines import preprocess as pipeline

    monkeypatch.chdir(tmp_path)
    folder = next(iter(corpus.values())).parent
    ds = str(tmp_path / "ds")
    summary = pipeline.run(str(folder), ds, ["--direct_num_workers=1"], run_id="corpus")
    n = len(corpus)
    assert summary["inputs"] == n and summary["counts_add_up"], summary
    want_rows = {k for k, (_, exp) in CASES.items() if exp == ROWS} | {k for k in corpus if k.startswith("hostile")}
    assert summary["sources_with_rows"] == len(want_rows) and summary["sources_rejected"] == n - len(want_rows)
    sid = {k: schema.source_id(str(p)) for k, p in corpus.items()}
    rows = {Path(u).stem for u in shards.list_shards(ds)}
    whole_rejects = {r["source_id"] for u in shards.list_rejects(ds) for r in pq.read_table(u).to_pylist()
                     if r["segment_index"] is None}
    assert rows == {sid[k] for k in want_rows}
    assert whole_rejects == {sid[k] for k in corpus if k not in want_rows}
    assert rows | whole_rejects == set(sid.values()) and not rows & whole_rejects
    for k, (_, exp) in CASES.items():  # the same reasons as case by case
        if exp != ROWS:
            assert {r["reason"] for r in _rejects(ds, sid[k])} <= exp, k
    # no name reached a shell: nothing created by $(...) or backticks, anywhere we ran
    for d in (tmp_path, folder, Path.cwd(), Path(__file__).resolve().parents[1]):
        assert not list(d.glob("PWNED*")), d


def test_internal_error_is_a_reject_naming_its_stage(corpus, backend, tmp_path):
    """A bug (here: a landmark backend that raises) still ends as a reject, with the stage it hit."""
    from preprocess.landmarks.base import LandmarkBackend

    class Broken(LandmarkBackend):
        name = "broken"

        def detect(self, frame_rgb):
            raise RuntimeError("detector exploded")

        def fit(self, frame_rgb, box):
            raise RuntimeError("unreachable")

    cfg, _ = backend
    ds = str(tmp_path / "ds")
    res = source.run_source({"uri": str(corpus["audio_8khz"])}, cfg, Broken(), ds)
    assert res["status"] == "rejected"
    (r,) = _rejects(ds, res["source_id"])
    assert (r["stage"], r["reason"], r["error_type"]) == ("track", "internal_error", "RuntimeError")
    assert "detector exploded" in r["message"]
