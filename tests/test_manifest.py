"""Manifests are checked whole before any work (issue 9, item 6).

Each bad manifest below once got through listing (a traceback, or every source decoded and then
a write error with exit 0). Now: one line naming file, line and reason, exit 2, nothing written.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from preprocess import sources

ROOT = Path(__file__).resolve().parents[1]
BAD = {
    # name: (file name, text, the line the error names, words in the reason)
    "csv_extra_column": ("m.csv", "uri,speaker_id\na.mp4,spk1\nSmith, John.mp4,spk2\n", 3, "3 fields"),
    "csv_missing_column": ("m.csv", "uri,speaker_id,split\na.mp4,s,train\nb.mp4,s\n", 3, "2 fields"),
    "csv_no_uri_column": ("m.csv", "path,speaker_id\na.mp4,s\n", 1, "no 'uri' column"),
    "jsonl_list": ("m.jsonl", '{"uri": "a.mp4"}\n[1,2]\n', 2, "JSON object"),
    "jsonl_number_uri": ("m.jsonl", '{"uri": "a.mp4"}\n{"uri": 123}\n', 2, "must be a string"),
    "jsonl_not_json": ("m.jsonl", '{"uri": "a.mp4"}\n{uri: a}\n', 2, "not JSON"),
    "jsonl_no_uri": ("m.jsonl", '{"uri": "a.mp4"}\n\n{"path": "b.mp4"}\n', 3, "no 'uri'"),
    "jsonl_list_speaker": ("m.jsonl", '{"uri": "a.mp4", "speaker_id": [1]}\n', 1, "speaker_id"),
    "http_not_allowed": ("m.jsonl", '{"uri": "a.mp4"}\n{"uri": "https://example.com/v.mp4"}\n', 2,
                         "https:// sources are not allowed"),
}


def _write(tmp_path: Path, name: str, text: str, bom: bool = False) -> Path:
    p = tmp_path / name
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return p


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifest_names_file_line_and_reason(case, tmp_path):
    name, text, line, words = BAD[case]
    m = _write(tmp_path, name, text)
    with pytest.raises(sources.SourceError) as e:
        list(sources.list_sources(str(m), schemes=("file", "gs", "memory")))
    msg = str(e.value)
    assert msg.startswith(f"{m}:{line}: "), msg
    assert words in msg and "\n" not in msg


def test_every_bad_line_is_counted_in_one_message(tmp_path):
    m = _write(tmp_path, "m.jsonl", '[1]\n{"uri": "a.mp4"}\n{"uri": 5}\n"x"\n')
    with pytest.raises(sources.SourceError, match=r"m\.jsonl:1: .*\(\+2 more bad line\(s\)\)$"):
        next(sources.list_sources(str(m)))


def test_numbers_become_strings_bom_accepted_duplicates_dropped(tmp_path, caplog):
    csv_m = _write(tmp_path, "m.csv", "uri,speaker_id,split\na.mp4,12,1\nb.mp4,,\na.mp4,12,1\n", bom=True)
    recs = list(sources.list_sources(str(csv_m)))
    assert [(Path(r["uri"]).name, r["speaker_id"], r["split"]) for r in recs] == [
        ("a.mp4", "12", "1"), ("b.mp4", None, None)]
    assert "duplicate" in caplog.text and "4 (= line 2)" in caplog.text
    # the same video with other labels: keeping line 2 silently lost line 4's speaker and split
    other = _write(tmp_path, "o.csv", "uri,speaker_id,split\na.mp4,12,1\nb.mp4,,\na.mp4,13,train\n")
    with pytest.raises(sources.SourceError, match=r"o\.csv:4: repeats line 2's uri with another speaker_id"):
        next(sources.list_sources(str(other)))
    jsonl_m = _write(tmp_path, "m.jsonl", '{"uri": "a.mp4", "speaker_id": 7, "split": 2.0}\n', bom=True)
    (rec,) = sources.list_sources(str(jsonl_m))
    assert rec["uri"] == str(tmp_path / "a.mp4") and rec["speaker_id"] == "7" and rec["split"] == "2"
    # one file, four spellings (file:// too: it used to become a second source with the same frames)
    spelled = _write(tmp_path, "s.csv", f"uri\na.mp4\n./a.mp4\nsub/../a.mp4\nfile://{tmp_path / 'a.mp4'}\n")
    caplog.clear()
    assert [r["uri"] for r in sources.list_sources(str(spelled))] == [str(tmp_path / "a.mp4")]
    assert "dropped 3 duplicate" in caplog.text
    caplog.clear()
    list(sources.list_sources(str(spelled)))      # a job lists a manifest several times: warned once
    assert "duplicate" not in caplog.text


def test_numeric_speaker_ids_fit_the_row_schema(tmp_path):
    """The coerced record goes into a row: the old int speaker_id failed at the write (ArrowTypeError)."""
    import numpy as np
    from preprocess import schema

    (rec,) = sources.list_sources(str(_write(tmp_path, "m.jsonl", '{"uri": "a.mp4", "speaker_id": 42}\n')))
    n = 2
    seg = schema.Segment(source_uri=rec["uri"], segment_index=0, start_frame=0,
                         frames=np.zeros((n, 192, 192, 3), np.uint8),
                         landmarks=np.zeros((n, 68, 2), np.float32), affine=np.zeros((n, 2, 3), np.float32),
                         detector_score=np.ones(n, np.float32), mel=np.zeros((4 * n, 80), np.float32),
                         fps=25.0, speaker_id=rec["speaker_id"], split=rec["split"],
                         source_width=224, source_height=224, quality={})
    row = schema.segment_to_row(seg, "jpeg", 95)
    import pyarrow as pa
    table = pa.Table.from_pylist([row], schema=schema.SEGMENT_SCHEMA)
    assert table.column("speaker_id").to_pylist() == ["42"]


@pytest.mark.parametrize("case", ["csv_extra_column", "jsonl_list", "jsonl_number_uri"])
def test_cli_refuses_a_bad_manifest_before_any_work(case, tmp_path):
    name, text, line, _ = BAD[case]
    m = _write(tmp_path, name, text)
    out = tmp_path / "ds"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "radio.cli", "preprocess", "--input", str(m),
                          "--output", str(out), "--no-progress"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    both = res.stdout + res.stderr
    assert "Traceback" not in both and f"{m}:{line}: " in both
    assert len(res.stderr.strip().splitlines()) <= 2, res.stderr
    assert not out.exists()


def test_schemes_are_checked_for_globs_and_allowed_when_listed(tmp_path):
    with pytest.raises(sources.SourceError, match="https:// sources are not allowed"):
        next(sources.list_sources("https://example.com/videos/*.mp4", schemes=("file", "gs", "memory")))
    m = _write(tmp_path, "m.jsonl", '{"uri": "https://example.com/v.mp4"}\n')
    (rec,) = sources.list_sources(str(m), schemes=("file", "https"))
    assert rec["uri"] == "https://example.com/v.mp4"
