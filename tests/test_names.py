"""File names real corpora hold: each input is read as the one file its name names, and two
inputs never share an output (no silent overwrite), whatever characters the names hold.

Odd-named files are made in tmp_path at test time from tests/data clips (copies or 1 s cuts).
"""
from __future__ import annotations

import json
import posixpath
import shutil
from pathlib import Path

import pytest

from conftest import DATA_DIR, ffmpeg
from preprocess import sources
from preprocess import uri as uri_mod

ONE_WORKER = ["--direct_num_workers=1"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Two 1 s clips that tell apart (different speakers): 'a' (00015) and 'b' (00086)."""
    d = tmp_path_factory.mktemp("clips")
    out = {}
    for key, name in (("a", "00015.mp4"), ("b", "00086.mp4")):
        out[key] = d / f"{key}.mp4"
        ffmpeg("-i", f"file:{DATA_DIR / name}", "-t", 1, "-c:v", "libx264", "-preset", "ultrafast",
               "-c:a", "aac", f"file:{out[key]}")
    return out


# ---------------------------------------------------------------- '::' (fsspec's chained URLs)
def test_a_name_with_a_double_colon_is_never_read_as_another_file(tmp_path, clips):
    """fsspec reads 'talk::1.mp4' as a chain and opens 'talk': preprocess made the rows of
    /data/talk::1.mp4 from /data/talk (another video) and labelled them as talk::1.mp4."""
    from preprocess.media import MediaError

    shutil.copy(clips["a"], tmp_path / "talk::1.mp4")
    shutil.copy(clips["b"], tmp_path / "talk")
    with pytest.raises(MediaError) as e:
        with uri_mod.local_copy(str(tmp_path / "talk::1.mp4")):
            pass
    assert e.value.reason == "unsupported_name" and "'::'" in str(e.value)
    # a folder listing keeps it (so that it is counted: a reject), a manifest line or --input is refused
    assert [Path(r["uri"]).name for r in sources.list_sources(str(tmp_path))] == ["talk::1.mp4"]
    (tmp_path / "m.csv").write_text("uri\ntalk::1.mp4\n")
    with pytest.raises(sources.SourceError, match=r"m\.csv:2: 'uri': .*holds '::'"):
        list(sources.list_sources(str(tmp_path / "m.csv")))
    with pytest.raises(sources.SourceError, match=r"--input .*holds '::'"):
        list(sources.list_sources(str(tmp_path / "talk::1.mp4")))
    with pytest.raises(uri_mod.UnsafePathError, match="'::'"):
        uri_mod.join(str(tmp_path), "a.mp4::x")


def test_preprocess_of_a_folder_rejects_a_double_colon_name_and_reads_the_rest(tmp_path, clips):
    from pipelines import preprocess as pipeline
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(clips["a"], corpus / "talk::1.mp4")
    shutil.copy(clips["b"], corpus / "talk.mp4")
    shutil.copy(clips["b"], corpus / "talk")          # what fsspec opened for 'talk::1.mp4'
    s = pipeline.run(str(corpus), str(tmp_path / "ds"), ONE_WORKER, run_id="r")
    assert (s["inputs"], s["sources_with_rows"], s["sources_rejected"]) == (2, 1, 1), s
    (rej,) = [r for f in (tmp_path / "ds" / "rejects").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert rej["source_uri"].endswith("talk::1.mp4") and rej["reason"] == "unsupported_name"
    rows = [r for f in (tmp_path / "ds" / "rows").glob("*.parquet")
            for r in pq.read_table(f, columns=["source_uri"]).to_pylist()]
    assert {Path(r["source_uri"]).name for r in rows} == {"talk.mp4"}


def test_dub_refuses_an_output_name_with_a_double_colon(tmp_path, clips):
    """A pair named 'a.mp4::z' wrote videos/a.mp4 (fsspec's chain), replacing pair 'a''s video:
    two pairs dubbed, one file."""
    from pipelines import dub as dub_job

    m = tmp_path / "pairs.jsonl"
    row = {"uri": str(clips["a"]), "audio_uri": str(DATA_DIR / "david4.wav")}
    m.write_text(json.dumps(dict(row, name="a")) + "\n" + json.dumps(dict(row, name="a.mp4::z")) + "\n")
    with pytest.raises(dub_job.DubInputError, match=r"pairs\.jsonl:2: output name 'a\.mp4::z'.*'::'"):
        dub_job.check_pairs(str(m), str(tmp_path / "out"))
    m.write_text(json.dumps(dict(row, uri=str(tmp_path / "v.mp4::x"), name="a")) + "\n")
    with pytest.raises(sources.SourceError, match=r"pairs\.jsonl:1: 'uri': .*'::'"):
        dub_job.check_pairs(str(m), str(tmp_path / "out"))


def test_evaluate_never_scores_a_double_colon_name_as_another_file(tmp_path, clips):
    from eval import clip as eval_clip
    from eval import pairs

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    for d in (gen, ref):
        shutil.copy(clips["a"], d / "x::y.mp4")
        shutil.copy(clips["b"], d / "x")
    (p,) = pairs.list_pairs(str(gen), str(ref))
    with pytest.raises(eval_clip.PairReject) as e:
        eval_clip._check_files(p["generated"], p["reference"], ("file",))
    assert e.value.reason == "unsupported_name"
    m = tmp_path / "pairs.csv"
    m.write_text("generated,reference\ngen/x::y.mp4,ref/x::y.mp4\n")
    with pytest.raises(pairs.PairsError, match=r"record 1.*'::'"):
        list(pairs.list_pairs(str(m)))


@pytest.mark.parametrize("flag", ["--output", "--input"])
def test_cli_refuses_a_double_colon_location_in_one_line(tmp_path, clips, flag, capsys):
    from radio import cli

    args = {"--input": str(clips["a"]), "--output": str(tmp_path / "out")}
    args[flag] += "::x"
    rc = cli.main(["preprocess", "--input", args["--input"], "--output", args["--output"], "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "'::'" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out:").exists()


# ---------------------------------------------------------------- glob characters in real names
def test_an_existing_file_named_like_a_glob_is_that_file(tmp_path, clips):
    """--input 'clip[1].mp4' was a pattern: it read clip1.mp4 (another video) and could never
    name the file itself; an existing path is now used as named (as radio evaluate does)."""
    shutil.copy(clips["a"], tmp_path / "clip[1].mp4")
    shutil.copy(clips["b"], tmp_path / "clip1.mp4")
    (rec,) = sources.list_sources(str(tmp_path / "clip[1].mp4"))
    assert Path(rec["uri"]).name == "clip[1].mp4"
    assert [Path(r["uri"]).name for r in sources.list_sources(str(tmp_path / "clip[0-9].mp4"))] == ["clip1.mp4"]
    folder = tmp_path / "take [1]"              # a folder, and a manifest, named with brackets
    folder.mkdir()
    shutil.copy(clips["a"], folder / "v.mp4")
    assert [Path(r["uri"]).name for r in sources.list_sources(str(folder))] == ["v.mp4"]
    (folder / "list[1].csv").write_text("uri\nv.mp4\n")
    assert sources.is_manifest(str(folder / "list[1].csv"))
    assert [Path(r["uri"]).name for r in sources.list_sources(str(folder / "list[1].csv"))] == ["v.mp4"]


# ---------------------------------------------------------------- long names
def test_a_legal_250_byte_name_is_written_and_a_longer_output_name_refused_up_front(tmp_path, clips):
    """A dub pair named with 246 bytes (+ '.mp4': a legal 250-byte file name) was dubbed, then failed
    the job: its upload's temporary, '.tmp-<32 hex>-<name>', was over 255 bytes (ENAMETOOLONG)."""
    from pipelines import dub as dub_job
    from preprocess import writer

    name = "é" * 123 + ".mp4"                          # 250 bytes in UTF-8
    uri_mod.write_bytes_atomic(str(tmp_path / "videos" / name), b"video")
    assert (tmp_path / "videos" / name).read_bytes() == b"video"
    assert [p.name for p in (tmp_path / "videos").iterdir()] == [name]      # no temporary left
    tmp = Path(writer.temp_name(str(tmp_path / name)))
    assert len(tmp.name.encode()) <= 255 and tmp.name.startswith(".tmp-")
    short = Path(writer.temp_name(str(tmp_path / "radio.pt"))).name     # short names keep their whole name
    assert short.startswith(".tmp-") and short.endswith("-radio.pt")
    m = tmp_path / "pairs.jsonl"
    row = {"uri": str(clips["a"]), "audio_uri": str(DATA_DIR / "david4.wav")}
    m.write_text(json.dumps(dict(row, name="L" * 247)) + "\n")
    assert len(dub_job.check_pairs(str(m), str(tmp_path / "out"))) == 1
    with pytest.raises(dub_job.DubInputError, match=r"pairs\.jsonl:1: output name 'L+': 'L+\.ref1\.mp4' is 256"):
        dub_job.check_pairs(str(m), str(tmp_path / "out"), references=2)
    m.write_text(json.dumps(dict(row, name="L" * 252)) + "\n")
    with pytest.raises(dub_job.DubInputError, match=r"is 256 bytes, more than a file name may have"):
        dub_job.check_pairs(str(m), str(tmp_path / "out"))


# ---------------------------------------------------------------- one name, two Unicode spellings
NFC, NFD = "caf\u00e9", "cafe\u0301"


def test_evaluate_pairs_a_name_spelled_nfc_with_its_nfd_reference(tmp_path):
    """References copied from a Mac (NFD 'cafe\\u0301.mp4') and generated videos named on Linux
    (NFC 'caf\\u00e9.mp4') are one name to a person: the pair was a missing_file reject plus an
    unpaired reference, and the clip was never scored."""
    from eval import pairs

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    for d, names in ((gen, [NFC, "x"]), (ref, [NFD, "x"])):
        d.mkdir()
        for n in names:
            (d / f"{n}.mp4").write_bytes(b"v")
    got = {p["key"]: (Path(p["generated"]).name, Path(p["reference"]).name) for p in pairs.list_pairs(str(gen), str(ref))}
    assert got == {NFC: (f"{NFC}.mp4", f"{NFD}.mp4"), "x": ("x.mp4", "x.mp4")}


def test_a_manifest_name_in_the_other_unicode_spelling_says_so_in_its_reject(tmp_path, clips):
    """A manifest typed 'caf\\u00e9.mp4' (NFC) over a Mac's 'cafe\\u0301.mp4' (NFD): the reject said
    'no such file' about a file the user sees; it now names the file that is there."""
    from preprocess import media

    shutil.copy(clips["a"], tmp_path / f"{NFD}.mp4")
    with pytest.raises(media.MediaError) as e:
        media.probe(str(tmp_path / f"{NFC}.mp4"))
    assert e.value.reason == "not_found" and f"'{NFD}.mp4' is there" in str(e.value) and "NFD" in str(e.value)
    with pytest.raises(media.MediaError, match=r"no such file \[") as e:     # no hint without one
        media.probe(str(tmp_path / "other.mp4"))


# ---------------------------------------------------------------- compact copies the dataset's other files
@pytest.mark.parametrize("odd", ["notes\nv2.txt", "a::b.txt"])
def test_compact_refuses_up_front_a_file_it_could_not_copy_under_its_name(tmp_path, odd):
    """`radio compact` copies the input's other files as is, at the very end: a stray file named with
    a newline failed the job after every shard was written (exit 1, a traceback in the log); one
    named 'a::b.txt' would have been copied to 'a'."""
    from preprocess import compact

    src = tmp_path / "ds"
    (src / "rows").mkdir(parents=True)
    (src / "runs" / "r1").mkdir(parents=True)
    (src / "runs" / "r1" / "summary.json").write_text("{}")
    compact.check_paths(str(src), str(tmp_path / "out"))
    (src / "runs" / "r1" / odd).write_text("x")
    with pytest.raises(compact.CompactError, match=r"holds 'runs/r1/.*', which cannot be copied under that name"):
        compact.check_paths(str(src), str(tmp_path / "out"))


# ---------------------------------------------------------------- hidden names in a corpus folder
def test_a_folder_or_glob_lists_no_hidden_files_unless_the_glob_asks(tmp_path, clips):
    """A corpus copied by a Mac onto an exFAT/SMB disk holds '._clip.mp4' (AppleDouble metadata)
    beside every clip, and a folder being written holds '.tmp-<uuid>-x.mp4' uploads: preprocess
    listed them as videos (rejects, or rows of half a file); `radio evaluate` already skipped them."""
    (tmp_path / "sub").mkdir()
    (tmp_path / ".cache").mkdir()
    shutil.copy(clips["a"], tmp_path / "a.mp4")
    (tmp_path / "._a.mp4").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / ".tmp-0123abcd-b.mp4").write_bytes(clips["b"].read_bytes()[:20000])
    shutil.copy(clips["a"], tmp_path / "sub" / "c.mp4")
    shutil.copy(clips["a"], tmp_path / ".cache" / "d.mp4")

    def names(spec):
        return [str(Path(r["uri"]).relative_to(tmp_path)) for r in sources.list_sources(str(spec))]

    assert names(tmp_path) == ["a.mp4", "sub/c.mp4"]
    assert names(tmp_path / "*.mp4") == ["a.mp4"]
    assert names(tmp_path / "**" / "*.mp4") == ["a.mp4", "sub/c.mp4"]
    assert names(tmp_path / ".*.mp4") == ["._a.mp4", ".tmp-0123abcd-b.mp4"]     # asked for by name
    assert names(tmp_path / ".cache") == [".cache/d.mp4"]
    assert names(tmp_path / "._a.mp4") == ["._a.mp4"]


# ---------------------------------------------------------------- symlinks in a corpus folder
def test_a_folder_or_glob_lists_a_file_once_whatever_links_to_it(tmp_path, clips, caplog):
    """A folder holding a.mp4 and link_in.mp4 -> a.mp4 gave rows for both: two ids, the same frames
    twice in the dataset (in train and in eval), where a manifest naming both is refused. A dangling
    link, or a link to a folder (not followed), vanished without a word."""
    from preprocess import source

    corp, elsewhere = tmp_path / "corp", tmp_path / "elsewhere"
    (corp / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(clips["a"], corp / "a.mp4")
    shutil.copy(clips["b"], corp / "b.mp4")
    shutil.copy(clips["b"], elsewhere / "c.mp4")

    def names(spec):
        return [str(Path(r["uri"]).relative_to(corp)) for r in sources.list_sources(str(spec))]

    plain = {spec: [source.source_id_of(r) for r in sources.list_sources(str(spec))]
             for spec in (corp, corp / "*.mp4")}
    (corp / "link_in.mp4").symlink_to("a.mp4")
    (corp / "sub" / "z.mp4").symlink_to("../a.mp4")
    (corp / "0first.mp4").symlink_to("b.mp4")              # sorts first: the file itself is kept
    (corp / "x.mp4").symlink_to(elsewhere / "c.mp4")       # two links to a file not listed: the first
    (corp / "y.mp4").symlink_to(elsewhere / "c.mp4")
    (corp / "gone.mp4").symlink_to("missing.mp4")
    (corp / "speakers").symlink_to(elsewhere)
    caplog.set_level("WARNING", logger="preprocess.sources")
    assert names(corp) == ["a.mp4", "b.mp4", "x.mp4"]
    assert ("left out 4 symlink(s) to a file listed already (its frames would be in two sources' rows): "
            "0first.mp4 (= b.mp4), link_in.mp4 (= a.mp4), sub/z.mp4 (= a.mp4), y.mp4 (= x.mp4)") in caplog.text
    assert "left out 1 broken symlink(s) (no file at their target): gone.mp4 -> missing.mp4" in caplog.text
    assert "left out 1 symlinked folder(s)" in caplog.text and f"speakers -> {elsewhere}" in caplog.text
    assert names(corp / "*.mp4") == ["a.mp4", "b.mp4", "x.mp4"]
    assert names(corp / "**" / "*.mp4") == ["a.mp4", "b.mp4", "x.mp4"]
    assert names(corp / "speakers" / "*.mp4") == ["speakers/c.mp4"]      # as the warning says
    # the files keep the ids they have without the links (reruns, done markers)
    assert [source.source_id_of(r) for r in sources.list_sources(str(corp))][:2] == plain[corp]
    assert [source.source_id_of(r) for r in sources.list_sources(str(corp / "*.mp4"))][:2] == plain[corp / "*.mp4"]
    caplog.clear()
    names(corp)
    assert "symlink" not in caplog.text                    # a job lists its input several times: said once
    (link,) = sources.list_sources(str(corp / "link_in.mp4"))   # named itself, a link is read as named
    assert link["uri"] == str(corp / "link_in.mp4")


# ---------------------------------------------------------------- containers named otherwise than .mp4
#: a clip in every container a folder lists (ffmpeg arguments after '-i CLIP -t 0.5')
_COPY = ["-c", "copy"]
_PS = ["-c:v", "mpeg2video", "-c:a", "mp2"]
_ASF = ["-c:v", "wmv2", "-c:a", "wmav2"]
CONTAINER_CLIPS = {
    ".mp4": _COPY, ".mov": _COPY, ".m4v": _COPY, ".3gp": _COPY, ".3g2": _COPY, ".f4v": _COPY, ".mkv": _COPY,
    ".webm": ["-c:v", "libvpx", "-c:a", "libopus", "-b:v", "200k"], ".flv": _COPY,
    ".avi": ["-c:v", "mpeg4", "-c:a", "mp3"], ".divx": ["-f", "avi", "-c:v", "mpeg4", "-c:a", "mp3"],
    ".ts": _COPY, ".mts": _COPY, ".m2ts": _COPY, ".m2t": _COPY,
    ".mpg": _PS, ".mpeg": _PS, ".mpe": ["-f", "mpeg", *_PS], ".vob": ["-f", "vob", *_PS],
    ".wmv": _ASF, ".asf": _ASF, ".ogv": ["-c:v", "libtheora", "-c:a", "libvorbis"],
    ".mxf": ["-c:v", "mpeg2video", "-c:a", "pcm_s16le", "-ar", "48000"],
}


def test_a_folder_lists_every_container_the_allow_list_opens(tmp_path, caplog):
    """A folder of camcorder .MTS/.m2ts, phone .3gp, .wmv, .ogv, .mxf and DVD .vob files gave
    '1 inputs' (only ref.mp4): the folder listing knew ten suffixes, the allow-list opens more, and
    the rest were dropped without a word, while a glob of the same folder read them all."""
    from preprocess import media

    caplog.set_level("INFO", logger="preprocess.sources")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, (suffix, args) in enumerate(sorted(CONTAINER_CLIPS.items())):
        name = f"c{i:02d}{suffix.upper() if i % 2 else suffix}"        # camcorders write CAM.MTS
        ffmpeg("-i", f"file:{DATA_DIR / '00015.mp4'}", "-t", 0.5, *args, f"file:{corpus / name}")
    for name in ("notes.txt", "speech.wav", "speech.ogg", "frame.jpg", "frame2.jpg", ".DS_Store"):
        (corpus / name).write_bytes(b"x")
    listed = [Path(r["uri"]) for r in sources.list_sources(str(corpus))]
    assert [p.suffix.lower() for p in listed] == sorted(CONTAINER_CLIPS), listed
    assert listed == [Path(r["uri"]) for r in sources.list_sources(str(corpus / "c*"))]   # as a glob does
    for p in listed:     # each opens through the allow-list: a listed suffix is never a sure reject
        info = media.probe(p, backend="pyav")
        assert info.has_video and info.has_audio, p.name
    # what the suffixes leave out is said once, counted by suffix (hidden names: silently)
    assert caplog.text.count("left out 5 file(s) not named as videos (2 .jpg, 1 .ogg, 1 .txt, 1 .wav;") == 1
    list(sources.list_sources(str(corpus)))
    assert caplog.text.count("not named as videos") == 1         # a job lists its input several times
    assert sorted(CONTAINER_CLIPS) == sorted(sources.VIDEO_SUFFIXES)   # a suffix added here gets a clip above


# ---------------------------------------------------------------- [ ] * ? on object stores
def _pair_fn(monkeypatch, output: str, references: int, checkpoint_sha256: str):
    """A DubPairFn without its model: dubbing writes 'video of <uri>' to each output (as test_dub)."""
    from pipelines import dub as dub_job
    from preprocess import config as config_mod
    from radio import dub

    def fake_dub(video, audio_uri, outs, *a, **k):
        for o in outs:
            uri_mod.write_bytes_atomic(o, b"video of " + video.encode())
        return {"frames": 3}

    cfg = config_mod.to_dict(dub_job.DubJobConfig(dub=dub.DubConfig(references=references)))
    fn = dub_job.DubPairFn("ckpt.pt", checkpoint_sha256, cfg, output, resume=True, retry_rejects=False)
    fn.cfg = config_mod.from_dict(dub_job.DubJobConfig, cfg)
    fn.model = fn.backend = None
    fn.device = "cpu"
    monkeypatch.setattr(dub, "dub_uris", fake_dub)
    return fn


def test_names_with_glob_characters_on_an_object_store_are_written_and_removed_as_named(tmp_path, monkeypatch):
    """On gs:// (memory:// here) fsspec's mv/rm expand [ ] * ?: the upload of videos/a[1].mp4 failed
    (its temporary, as a pattern, matched nothing), and dubbing pair 'a[1]' again with fewer
    references removed 'a1.ref1.mp4' — pair 'a1''s video — instead of its own 'a[1].ref1.mp4'."""
    import fsspec

    out = f"memory://{tmp_path.name}/out"
    src = tmp_path / "v.mp4"
    src.write_bytes(b"v")
    a, b = ({"uri": str(src), "audio_uri": str(src), "name": n} for n in ("a[1]", "a1"))
    fn = _pair_fn(monkeypatch, out, 2, "a" * 64)
    assert [r["status_now"] for item in (b, a) for r in fn.process(item)] == ["dubbed", "dubbed"]
    fs = fsspec.filesystem("memory")
    videos = f"/{tmp_path.name}/out/videos"
    assert sorted(posixpath.basename(p) for p in fs.ls(videos, detail=False)) == [
        "a1.mp4", "a1.ref1.mp4", "a[1].mp4", "a[1].ref1.mp4"]
    (r,) = _pair_fn(monkeypatch, out, 1, "b" * 64).process(a)      # another checkpoint, one reference
    assert r["status_now"] == "dubbed"
    assert sorted(posixpath.basename(p) for p in fs.ls(videos, detail=False)) == ["a1.mp4", "a1.ref1.mp4", "a[1].mp4"]
    for name in ("b*.mp4", "c?.mp4", "d[x].mp4"):
        uri_mod.write_bytes_atomic(f"{out}/other/{name}", b"x")
    assert sorted(posixpath.basename(p) for p in fs.ls(f"/{tmp_path.name}/out/other", detail=False)) == [
        "b*.mp4", "c?.mp4", "d[x].mp4"]


# ---------------------------------------------------------------- an --output named with [ ] * ?
@pytest.mark.parametrize("proto", ["file", "memory"])
def test_removals_in_an_output_named_like_a_glob_never_touch_another_output(tmp_path, proto):
    """fsspec's rm expands [ ] * ? on object stores (memory:// here, gs:// alike): rotating the
    checkpoints of --output gs://b/exp[1] deleted gs://b/exp1's, and cleaning up exp[1] removed
    exp1's temporaries and evaluate runs instead of its own. (Local disks: the same, as a check.)"""
    import torch

    from eval import results
    from preprocess import shards
    from radio.train import checkpoint

    root = str(tmp_path) if proto == "file" else f"memory://{tmp_path}"
    odd, plain = uri_mod.join(root, "exp[1]"), uri_mod.join(root, "exp1")
    for out in (plain, odd):
        for step in (1, 2):
            checkpoint.save(out, {"step": step, "w": torch.zeros(1)}, keep=2)
    checkpoint.save(odd, {"step": 3, "w": torch.zeros(1)}, keep=1)
    assert [s for s, _ in checkpoint.list_checkpoints(odd)] == [3]
    assert [s for s, _ in checkpoint.list_checkpoints(plain)] == [1, 2]

    for out in (plain, odd):                        # what a killed run left, and an earlier evaluate run
        uri_mod.write_bytes_atomic(uri_mod.join(out, "rows", ".tmp-deadbeef-part.parquet"), b"x")
        uri_mod.write_bytes_atomic(uri_mod.join(out, "runs", "r", "summary.json"), b"{}")
    shards.remove_stale_temporaries(odd)
    results.prepare_run_dir(uri_mod.join(odd, "runs", "r"))
    assert not uri_mod.exists(uri_mod.join(odd, "rows", ".tmp-deadbeef-part.parquet"))
    assert not uri_mod.exists(uri_mod.join(odd, "runs", "r", "summary.json"))
    assert uri_mod.exists(uri_mod.join(plain, "rows", ".tmp-deadbeef-part.parquet"))
    assert uri_mod.exists(uri_mod.join(plain, "runs", "r", "summary.json"))


def test_gs_and_gcs_spellings_are_one_location():
    """gcsfs answers both schemes: the same object spelled gs:// and gcs:// was two videos to the
    duplicate-frames and replaced-range checks, and an --output inside a dataset spelled the other way
    was not seen as inside it."""
    assert uri_mod.canonical("gcs://b/v/a.mp4") == uri_mod.canonical("gs://b/v/a.mp4") == "gs://b/v/a.mp4"
    assert uri_mod.canonical("GCS://b/ds/") == "gs://b/ds"
    assert uri_mod.within("gcs://b/ds/run", "gs://b/ds") and not uri_mod.within("gs://b/ds2", "gcs://b/ds")
    assert uri_mod.canonical("memory://b/x/") == "memory://b/x"
    ranges = [(2, {"uri": "gs://b/v.mp4", "start_s": 0.0, "end_s": 3.0}),
              (3, {"uri": "gcs://b/v.mp4", "start_s": 2.0, "end_s": 5.0})]
    (err,) = sources._overlaps("m.csv", ranges)
    assert err.startswith("m.csv:3: ") and "overlaps line 2" in err
