"""The `radio` CLI: a mistake is found before any work, in one line, exit 2, nothing written
(issue 12 items 1 and 3); `radio config` lists every config key; help examples are valid (item 4).

All of these fail before a pipeline or trainer starts, so they are quick.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA_DIR
from preprocess import config as config_mod
from radio import cli, config_doc

REPO = Path(__file__).resolve().parents[1]
CLIP = str(DATA_DIR / "00015.mp4")


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    """Every path under ``root`` with its size and mtime: 'nothing written' compares two of these."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in sorted(root.rglob("*"))}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_mistake(argv, capsys, tmp_path: Path, *, says: str) -> str:
    before = snapshot(tmp_path)
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    assert says in err, err
    assert snapshot(tmp_path) == before, "a mistake wrote files"
    return err


@pytest.fixture
def shards_dir(tmp_path) -> Path:
    """A dataset folder whose listing has one row shard (the checks only list it)."""
    d = tmp_path / "ds"
    (d / "rows").mkdir(parents=True)
    (d / "rows" / "a.parquet").write_bytes(b"")
    return d


@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "taken"
    f.write_text("keep me")
    return f


# ---- item 1: inputs ----------------------------------------------------------------------------
def test_glob_matching_nothing(tmp_path, capsys):
    assert_mistake(["preprocess", "--input", str(DATA_DIR / "*.mkv"), "--output", str(tmp_path / "ds")],
                   capsys, tmp_path, says="lists no video files")
    assert not (tmp_path / "ds").exists()


def test_folder_without_videos(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_mistake(["preprocess", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "ds")],
                   capsys, tmp_path, says="folder lists no video files")


def test_dub_manifest_without_audio_column(tmp_path, capsys):
    m = tmp_path / "pairs.jsonl"
    m.write_text('{"uri": "%s"}\n' % CLIP)
    assert_mistake(["dub", "--checkpoint", "x.pt", "--input", str(m), "--output", str(tmp_path / "dub")],
                   capsys, tmp_path, says="no 'audio_uri'")


@pytest.mark.parametrize("setting, says", [("dub.x264_preset=ultrafst", "dub.x264_preset"), ("dub.crf=60", "dub.crf")])
def test_dub_bad_x264_preset_or_crf(tmp_path, capsys, setting, says):
    m = tmp_path / "pairs.jsonl"
    m.write_text('{"uri": "%s", "audio_uri": "%s"}\n' % (CLIP, DATA_DIR / "david4.wav"))
    assert_mistake(["dub", "--checkpoint", "x.pt", "--input", str(m), "--output", str(tmp_path / "dub"),
                    "--set", setting], capsys, tmp_path, says=says)


@pytest.mark.parametrize("rows, extra, says", [
    ([{"name": "a"}, {"name": "a.ref1"}], ["--references", "2"], "lines 1 and 2 both write videos/a.ref1.mp4"),
    ([{"name": 5}, {"name": True}], [], "pairs.jsonl:2: 'name' must be a string"),
    ([{"name": "x"}, {"name": "x"}], [], "lines 1 and 2 both write videos/x.mp4"),
    ([{"uri": "http://127.0.0.1:1/v.mp4"}], [], "pairs.jsonl:1: http:// sources are not allowed"),
    ([{"audio_uri": "ftp://127.0.0.1/s.wav"}], [], "pairs.jsonl:1: ftp:// sources are not allowed"),
])
def test_dub_manifest_mistakes_are_one_line(tmp_path, capsys, caplog, rows, extra, says):
    m = tmp_path / "pairs.jsonl"
    m.write_text("".join(json.dumps({"uri": str(CLIP), "audio_uri": str(DATA_DIR / "david4.wav"), **r}) + "\n"
                         for r in rows))
    with caplog.at_level("WARNING"):
        assert_mistake(["dub", "--checkpoint", "x.pt", "--input", str(m), "--output", str(tmp_path / "dub"), *extra],
                       capsys, tmp_path, says=says)
    assert "dropped" not in caplog.text


def test_dub_output_beam_cannot_write(tmp_path, capsys):
    m = tmp_path / "pairs.jsonl"
    m.write_text('{"uri": "%s", "audio_uri": "%s"}\n' % (CLIP, DATA_DIR / "david4.wav"))
    assert_mistake(["dub", "--checkpoint", "x.pt", "--input", str(m), "--output", "memory://radio-test/dub"],
                   capsys, tmp_path, says="Beam cannot write there")


def test_one_video_with_two_speech_tracks_is_two_pairs_not_a_duplicate(tmp_path, caplog):
    from radio import checks

    m = tmp_path / "pairs.jsonl"
    m.write_text('{"uri": "%s", "audio_uri": "a.wav"}\n{"uri": "%s", "audio_uri": "b.wav"}\n' % (CLIP, CLIP))
    with caplog.at_level("WARNING"):
        checks.manifest(str(m), ("uri", "audio_uri"), key=("uri", "audio_uri", "name"))
        assert "duplicate" not in caplog.text
        checks.manifest(str(m), ("uri",))            # a preprocess manifest: the same video twice
        assert "duplicate" in caplog.text


def test_missing_config_file(tmp_path, capsys):
    assert_mistake(["preprocess", "--input", CLIP, "--output", str(tmp_path / "ds"), "--config",
                    str(tmp_path / "nope.yaml")], capsys, tmp_path, says="no such config file")


def test_config_by_bundled_name_from_any_folder(tmp_path, monkeypatch, capsys):
    """An installed radio has no configs/ folder: `--config smoke-cpu`, and the documented
    `--config configs/smoke-cpu.yaml` run from another folder, use the bundled file."""
    rc, expected, err = run_cli(["model-summary", "--config", str(REPO / "configs/smoke-cpu.yaml")], capsys)
    assert rc == 0, err
    monkeypatch.chdir(tmp_path)
    for value in ("smoke-cpu", "configs/smoke-cpu.yaml"):
        rc, out, err = run_cli(["model-summary", "--config", value], capsys)
        assert (rc, out) == (0, expected), err


def test_an_unknown_config_name_lists_the_bundled_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_mistake(["model-summary", "--config", "smoke"], capsys, tmp_path,
                   says="--config 'smoke': no such config file, nor a bundled config (bundled: eval, paper-192, "
                        "smoke-cpu).")


@pytest.mark.parametrize("command", ["preprocess", "compact", "train", "train-sync", "dub", "evaluate", "model-summary"])
def test_config_help_names_every_bundled_config(command):
    action = next(a for a in cli.subparser(cli.build_parser(), command)._actions if "--config" in a.option_strings)
    assert sorted(config_mod.bundled_configs()) == ["eval", "paper-192", "smoke-cpu"]
    assert all(name in action.help for name in config_mod.bundled_configs())


# ---- item 1: outputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["preprocess", "dub", "evaluate", "train", "train-sync"])
def test_output_is_an_existing_file(command, tmp_path, capsys, a_file, shards_dir):
    m = tmp_path / "pairs.jsonl"
    m.write_text('{"uri": "%s", "audio_uri": "%s"}\n' % (CLIP, CLIP))
    argv = {"preprocess": ["preprocess", "--input", CLIP],
            "dub": ["dub", "--checkpoint", "x.pt", "--input", str(m)],
            "evaluate": ["evaluate", "--generated", str(DATA_DIR), "--reference", str(DATA_DIR)],
            "train": ["train", "--config", str(REPO / "configs/smoke-cpu.yaml"), "--data", str(shards_dir)],
            "train-sync": ["train-sync", "--data", str(shards_dir)]}[command]
    assert_mistake(argv + ["--output", str(a_file)], capsys, tmp_path, says="is an existing file")
    assert a_file.read_text() == "keep me"


def test_output_under_a_file(tmp_path, capsys, a_file):
    assert_mistake(["preprocess", "--input", CLIP, "--output", str(a_file / "ds")], capsys, tmp_path,
                   says="is a file, so no folder")


@pytest.mark.parametrize("extra,says", [(["--rows", "0"], "--rows 0: expected at least 1"),
                                        (["--frames", "-3"], "--frames -3: expected at least 1"),
                                        (["--clip-id", "nope"], "--clip-id 'nope': no such segment")])
def test_inspect_what_to_show_is_checked(extra, says, sample_dataset, tmp_path, capsys):
    """A numpy linspace traceback (--frames -3) and a ValueError traceback (unknown clip id) before."""
    assert_mistake(["inspect", str(sample_dataset), "--output", str(tmp_path / "s.png"), *extra], capsys, tmp_path,
                   says=says)


@pytest.mark.parametrize("name", ["../../escape", ".", "a/b"])
def test_a_run_id_that_is_not_one_name_is_one_line(name, tmp_path, capsys):
    """preprocess printed UnsafePathError's 22-line traceback, exit 1 (evaluate was already one line)."""
    assert_mistake(["preprocess", "--input", CLIP, "--output", str(tmp_path / "o"), "--run-id", name], capsys,
                   tmp_path, says=f"--run-id {name!r}")


def test_inspect_output_is_a_folder(tmp_path, capsys, shards_dir):
    assert_mistake(["inspect", str(shards_dir), "--output", str(tmp_path)], capsys, tmp_path,
                   says="is an existing folder")


# ---- item 1: train -----------------------------------------------------------------------------
def test_train_on_a_folder_without_shards(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    assert_mistake(["train", "--config", str(REPO / "configs/smoke-cpu.yaml"), "--data", str(tmp_path / "ds"),
                    "--output", str(tmp_path / "run")], capsys, tmp_path, says="no row shards")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("output", ["same", "inside", "through a link"])
def test_train_output_in_its_dataset(output, tmp_path, capsys, shards_dir):
    """A run written into its dataset would mix checkpoints with shards (and `radio compact` would
    copy them): refused however the two paths are spelled."""
    before = sorted(p.relative_to(shards_dir) for p in shards_dir.rglob("*"))
    (tmp_path / "link").symlink_to(shards_dir)
    data, out = {"same": (str(shards_dir) + "/", str(shards_dir)),
                 "inside": (str(shards_dir), str(shards_dir / "." / "run")),
                 "through a link": (str(tmp_path / "link"), str(shards_dir / "run"))}[output]
    assert_mistake(["train", "--config", str(REPO / "configs/smoke-cpu.yaml"), "--data", data, "--output", out],
                   capsys, tmp_path, says="or inside it")
    assert sorted(p.relative_to(shards_dir) for p in shards_dir.rglob("*")) == before


def test_train_without_vgg19_weights(tmp_path, capsys, shards_dir):
    err = assert_mistake(["train", "--config", str(REPO / "configs/smoke-cpu.yaml"), "--data", str(shards_dir),
                          "--output", str(tmp_path / "run"), "--set", "loss.perceptual=1.0"],
                         capsys, tmp_path, says="VGG19")
    assert "loss.vgg_uri" in err
    assert not (tmp_path / "run").exists()


def test_train_bad_config_value(tmp_path, capsys, shards_dir):
    assert_mistake(["train", "--config", str(REPO / "configs/smoke-cpu.yaml"), "--data", str(shards_dir),
                    "--output", str(tmp_path / "run"), "--set", "run.amp=fp16"], capsys, tmp_path,
                   says="run.amp must be auto, bf16 or off")


def test_verbose_keeps_the_traceback(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(Exception, match="no row shards"):
        cli.main(["-v", "train", "--data", str(tmp_path / "ds"), "--output", str(tmp_path / "run")])


# ---- item 3: unknown options -------------------------------------------------------------------
@pytest.mark.parametrize("argv,hint", [
    (["preprocess", "--input", CLIP, "--resme"], "did you mean --resume?"),
    (["preprocess", "--input", CLIP, "--runer", "DataflowRunner"], "did you mean --runner?"),
    (["evaluate", "--generated", CLIP, "--refrence", CLIP], "did you mean --reference?"),
    (["dub", "--checkpoint", "x", "--input", "p.jsonl", "--chekpoint", "y"], "did you mean --checkpoint?"),
    (["train", "--data", "d", "--confg", "c.yaml"], "did you mean --config?"),
])
def test_unknown_option(argv, hint, tmp_path, capsys):
    err = assert_mistake(argv + ["--output", str(tmp_path / "out")], capsys, tmp_path, says=hint)
    assert "unknown option" in err


def test_a_runner_beam_does_not_know_is_one_line(tmp_path, capsys):
    """`--runner DataflowRuner` was Beam's 25-line 'Unexpected pipeline runner' traceback, exit 1."""
    assert_mistake(["preprocess", "--input", CLIP, "--output", str(tmp_path / "out"), "--runner", "DataflowRuner"],
                   capsys, tmp_path, says="did you mean DataflowRunner?")


def test_an_input_uri_of_a_scheme_not_allowed_is_refused_before_it_is_read(tmp_path, capsys):
    """`--input http://…` was fetched (a 77-line DNS traceback offline) while the same URI in a
    manifest is refused: input.schemes holds for the input itself."""
    assert_mistake(["preprocess", "--input", "http://example.invalid/a.mp4", "--output", str(tmp_path / "o")],
                   capsys, tmp_path, says="http:// sources are not allowed")


@pytest.mark.parametrize("content,says", [(b"worker: [1\n", "not valid YAML: expected ',' or ']'"),
                                           (b"\x00\x00\x00\x18ftypmp42\xff\xfe", "not a YAML text file"),
                                           (None, "not a config file (IsADirectoryError)")])
def test_a_config_that_does_not_parse_is_one_line(content, says, tmp_path, capsys):
    """A binary file, broken YAML or a folder given as --config were 30-50-line tracebacks, exit 1."""
    cfg = tmp_path / "c.yaml"
    cfg.mkdir() if content is None else cfg.write_bytes(content)
    for command in (["preprocess", "--input", CLIP, "--output", str(tmp_path / "out")], ["model-summary"]):
        assert_mistake([*command, "--config", str(cfg)], capsys, tmp_path, says=says)
    assert_mistake(["preprocess", "--input", CLIP, "--output", str(tmp_path / "out"), "--set", "worker.attempts=[1"],
                   capsys, tmp_path, says="the value is not valid YAML")


def test_beam_options_still_pass(tmp_path):
    """Options Beam knows are not mistakes (they reach the pipeline options unchanged)."""
    from radio import checks

    checks.unknown_options(["--runner", "DataflowRunner", "--direct_num_workers=2", "--project", "p"],
                           cli.subparser(cli.build_parser(), "preprocess"), beam=True)


def test_one_line_through_the_real_entry_point(tmp_path):
    """The installed command path: a subprocess, exit status 2, one line on stderr, no output."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "radio.cli", "preprocess", "--input", str(DATA_DIR / "*.mkv"),
                        "--output", str(tmp_path / "ds")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "ds").exists()


# ---- item 4: radio config and help -------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and k not in ("backend_args", "tracker",
                                                                                      "track", "landmark_args"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("command", sorted(config_doc.COMMANDS))
def test_radio_config_lists_every_key(command, capsys):
    """Every key of the config the loader builds (flattened ``to_dict`` of the defaults) is
    listed once with its default, and each listed key is accepted by ``--set``."""
    rc, out, _ = run_cli(["config", command], capsys)
    assert rc == 0
    cls = config_doc.config_class(command)
    lines = [ln for ln in out.splitlines() if not ln.startswith("#")]
    listed = {ln.split(" = ", 1)[0]: ln.split(" = ", 1)[1] for ln in lines}
    assert len(listed) == len(lines)
    expected = _flatten(config_mod.to_dict(cls()))
    assert set(listed) == set(expected), set(listed) ^ set(expected)
    for key, rest in listed.items():
        default = rest.split("  # ", 1)[0].strip()
        loaded = config_mod.load(cls, None, [f"{key}={default}"])  # the key is real; its default parses
        assert config_mod.to_dict(loaded) == config_mod.to_dict(cls()), key


def test_config_descriptions_come_from_the_source():
    rows = {k: d for k, _, d in config_doc.keys(config_doc.config_class("evaluate"))}
    assert "fastest on one CPU core" in rows["lpips.batch_size"]
    rows = {k: d for k, _, d in config_doc.keys(config_doc.config_class("preprocess"))}
    assert rows["decode.backend"].startswith("auto (PyAV in-process")  # a block above the field
    assert "glibc" in rows["decode.chunk_mib"] and "glibc" not in rows["decode.backend"]


@pytest.mark.parametrize("command", sorted(cli.EXAMPLES))
def test_help_examples_use_real_keys(command, capsys):
    """Each --set in a command's help examples loads through that command's config."""
    cls = config_doc.config_class(command)
    sets = []
    for example in cli.EXAMPLES[command]:
        words = shlex.split(example.replace("$(", "'$(").replace("-f1)", "-f1)'"))
        assert words[:2] == ["radio", command]
        sets += [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    config_mod.load(cls, None, sets)
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out
    if command != "preprocess":  # the key of preprocess only (issue 12: it was shown on every command)
        assert "faces.backend" not in out


def test_dub_and_evaluate_help_explain_inputs(capsys):
    for command, words in (("dub", ["audio_uri", "resume", "manifest's own folder"]),
                           ("evaluate", ["lpips.enabled", "sync.enabled", "length_tolerance", "max_frames",
                                         "generated, reference"])):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        for w in words:
            assert w in out, (command, w)


def test_config_classes_have_no_positional_fields():
    """`radio config` shows defaults: every field has one."""
    for command in config_doc.COMMANDS:
        for f in dataclasses.fields(config_doc.config_class(command)):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


# ---- item 2: a job that fails says why in one line ---------------------------------------------
def test_first_error_of_a_beam_failure():
    from pipelines import jobrun

    exc = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                       "FileExistsError: [Errno 17] File exists: '/o/rows'\n\nDuring handling ...\n"
                       "RuntimeError: FileExistsError: [Errno 17] File exists: '/o/rows' "
                       "[while running 'ProcessSource']")
    log_text = ('Worker: severity: ERROR message: "radio: element failed: /data/a%20b%C3%BC.mp4" trace: ""\n'
                'radio: element failed: /data/second.mp4\n')
    assert jobrun.first_error(exc, log_text) == ("FileExistsError: [Errno 17] File exists: '/o/rows' in step "
                                                 "ProcessSource on /data/a bü.mp4")
    assert jobrun.first_error(MemoryError("out of memory"), "") == "MemoryError: out of memory"


def test_failed_job_is_one_line_with_a_log(tmp_path, capsys):
    """An environment failure inside the job (the dataset's rows/ is a file): exit 1, one line naming
    the error, the step and the element, and the log with the full traces under runs/<run_id>/."""
    out = tmp_path / "ds"
    out.mkdir()
    (out / "rows").write_text("not a folder")
    rc, _, err = run_cli(["preprocess", "--input", CLIP, "--output", str(out), "--run-id", "r1", "--no-progress",
                          "--direct_num_workers=1"], capsys)
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    log_path = out / "runs" / "r1" / "job.log"
    assert "Error: " in lines[0] and "/rows" in lines[0] and "in step ProcessSource" in lines[0], lines
    assert f"on {CLIP}" in lines[0] and f"full traces: {log_path}" in lines[0], lines
    assert "Traceback (most recent call last)" in log_path.read_text()


# ---- item 5: progress and the end of train -----------------------------------------------------
class _FakeFn:
    """A per-item DoFn stand-in: one output per item with its frames; 'boom' raises."""

    def setup(self):
        self.ready = True

    def process(self, item):
        from preprocess import progress

        if item["uri"] == "boom":
            raise OSError(28, "No space left on device")
        for _ in range(item["frames"]):
            progress.frames(1)  # frames of a long item show up while it runs
        yield {"status": "rows", "frames": item["frames"]}


def test_tracked_reports_items_frames_and_the_failing_element(tmp_path, caplog):
    from pipelines import jobrun

    fns = [jobrun.Tracked(_FakeFn(), describe=jobrun.uri_of, frames=jobrun.frames_of, progress_dir=str(tmp_path))
           for _ in range(2)]
    bar = jobrun.Bar(str(tmp_path), 3, unit="video", desc="t", stream=None, workers=2)
    fns[0].setup()
    assert bar.read() == (1, 0, 0)  # one worker ready, nothing done
    fns[1].setup()
    assert list(fns[0].process({"uri": "a", "frames": 100})) == [{"status": "rows", "frames": 100}]
    list(fns[1].process({"uri": "b", "frames": 25}))
    list(fns[1].process({"uri": "c", "frames": 5}))
    assert bar.read() == (2, 3, 130)  # frames reported while running are not counted twice
    with pytest.raises(OSError, match="No space"):  # re-raised unchanged: the runner retries it
        list(fns[0].process({"uri": "boom"}))
    assert f"{jobrun.FAILED_MARK} boom" in caplog.text
    assert bar.read() == (2, 3, 130)


def test_train_ends_with_the_export_path_and_sha256(tmp_path, capsys):
    import hashlib

    from radio.train import cli as train_cli

    (tmp_path / "radio.pt").write_bytes(b"weights")
    train_cli._report_export(str(tmp_path), "radio.pt")
    out = capsys.readouterr().out
    assert str(tmp_path / "radio.pt") in out and hashlib.sha256(b"weights").hexdigest() in out


def test_frames_of_a_long_item_show_while_it_runs(tmp_path):
    from pipelines import jobrun
    from preprocess import progress

    bar = jobrun.Bar(str(tmp_path), 1, unit="pair", desc="t", stream=None, workers=1)
    seen, fns = [], []          # fns: kept alive (a report file is named by the DoFn's id())

    def item_of(decoded: int, kept: int, uri: str):
        class Long(_FakeFn):
            def process(self, item):
                progress.frames(decoded)
                seen.append(bar.read())
                yield {"frames": kept}

        fn = jobrun.Tracked(Long(), describe=jobrun.uri_of, frames=jobrun.frames_of, progress_dir=str(tmp_path))
        fns.append(fn)
        fn.setup()
        fn._last = float("-inf")  # past the twice-a-second throttle
        list(fn.process({"uri": uri}))

    item_of(7, 7, "a")
    assert seen == [(1, 0, 7)] and bar.read() == (1, 1, 7)
    item_of(7, 5, "b")                         # a source decodes 7 frames, its rows keep 5
    assert seen[-1] == (2, 1, 14) and bar.read() == (2, 2, 14)   # the count never steps back


def test_failed_job_with_worker_processes_keeps_their_traces_out_of_the_console(tmp_path):
    """Two local worker processes (their tracebacks used to fill 200 lines of stderr): one line on
    stderr, exit 1, the traces in the run's job.log."""
    out = tmp_path / "ds"
    out.mkdir()
    (out / "rows").write_text("not a folder")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "radio.cli", "preprocess", "--input", CLIP, "--output", str(out),
                        "--run-id", "r2", "--no-progress", "--direct_num_workers=2"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "in step ProcessSource" in lines[0] and f"on {CLIP}" in lines[0], lines
    assert p.stdout == ""
    assert (out / "runs" / "r2" / "job.log").read_text().count("Traceback (most recent call last)") >= 1


def test_bad_set_key_names_the_closest(tmp_path, capsys):
    assert_mistake(["evaluate", "--generated", str(DATA_DIR), "--output", str(tmp_path / "e"),
                    "--set", "max_frame=10"], capsys, tmp_path, says="did you mean 'max_frames'?")


def test_evaluate_generated_that_lists_no_video(tmp_path, capsys):
    """A glob that matches nothing or an empty folder is a mistake: it used to exit 0 with
    '2 pairs = 0 scored + 0 rejected + 2 unpaired', replacing the day's run with an empty one."""
    (tmp_path / "empty").mkdir()
    for gen in (str(tmp_path / "gen" / "*.mp5"), str(tmp_path / "empty")):
        assert_mistake(["evaluate", "--generated", gen, "--reference", str(DATA_DIR), "--output", str(tmp_path / "e"),
                        "--set", "lpips.enabled=false", "--set", "sync.enabled=false"], capsys, tmp_path,
                       says=f"--generated {gen!r}: the ")


def test_evaluate_manifest_with_a_disallowed_scheme(tmp_path, capsys):
    """http:// and ftp:// videos in a pairs manifest used to be fetched; now refused before any work."""
    m = tmp_path / "pairs.jsonl"
    m.write_text(f'{{"generated": "ftp://127.0.0.1:9/x.mp4", "reference": "{CLIP}"}}\n')
    assert_mistake(["evaluate", "--generated", str(m), "--output", str(tmp_path / "e"),
                    "--set", "lpips.enabled=false", "--set", "sync.enabled=false"], capsys, tmp_path,
                   says="record 1, generated: ftp:// is not an allowed scheme (allowed: file, gs, memory; set input.schemes")


def test_face_alignment_without_weights(tmp_path, capsys):
    assert_mistake(["preprocess", "--input", CLIP, "--output", str(tmp_path / "ds"),
                    "--set", "faces.backend=face_alignment"], capsys, tmp_path,
                   says="faces.backend_args.fan_uri")
    assert_mistake(["preprocess", "--input", CLIP, "--output", str(tmp_path / "ds"),
                    "--set", "faces.backend=face_alignment",
                    "--set", f"faces.backend_args={{fan_uri: {tmp_path}/nope.pth}}"], capsys, tmp_path,
                   says="weight file not found")


def test_remote_runs_log_beam_counters(caplog):
    """On a runner without the local bar (Dataflow), the job's counters are logged as it runs."""
    import logging
    from types import SimpleNamespace as NS

    from pipelines import jobrun

    def counter(name, value):
        return NS(key=NS(metric=NS(name=name)), committed=value, attempted=value)

    class Result:
        def metrics(self):
            return NS(query=lambda _flt: {"counters": [counter("videos", 3), counter("frames", 450),
                                                       counter("frames", 50)]})

    with caplog.at_level(logging.INFO, logger="pipelines.jobrun"):
        jobrun._log_counters(Result(), "radio.preprocess")
    assert "radio.preprocess: frames 500, videos 3" in caplog.text


# ---- abbreviations, ~, the environment, Ctrl-C ---------------------------------------------------
def test_a_flag_prefix_is_not_taken_for_the_whole_flag(tmp_path, capsys):
    """argparse took `--run DataflowRunner` for `--run-id DataflowRunner`: a local run named
    'DataflowRunner', exit 0, where the user meant --runner."""
    assert_mistake(["preprocess", "--input", CLIP, "--output", str(tmp_path / "o"), "--run", "DataflowRunner"],
                   capsys, tmp_path, says="unknown option --run")


def test_home_in_a_local_path_is_expanded_once_for_every_check(tmp_path, capsys, monkeypatch):
    """`--output ~/f` with ~/f a file skipped the 'is a file' check (os.path does not expand ~, fsspec
    does) and ended in a NotADirectoryError traceback; a good ~ path split the output in two."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "f").write_text("keep me")
    assert_mistake(["preprocess", "--input", CLIP, "--output", "~/f"], capsys, tmp_path, says="is an existing file")
    args = cli.build_parser().parse_args(["train", "--data", "~/ds", "--output", "~/run", "--config", "gs://b/~c"])
    cli.expand_home(args)
    assert (args.data, args.output, args.config) == (str(tmp_path / "ds"), str(tmp_path / "run"), "gs://b/~c")


def test_an_environment_failure_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    """An unreachable bucket ended in a 150-250-line gcsfs/aiohttp traceback."""
    from radio import checks

    def offline(args):
        raise ConnectionError("Cannot connect to host storage.googleapis.com:443 [Temporary failure in name resolution]")

    monkeypatch.setattr(checks, "command", offline)
    monkeypatch.setattr("preprocess.uri.check_network", lambda uris: None)   # (its own test: test_gcs.py)
    rc, out, err = run_cli(["preprocess", "--input", "gs://b/*.mp4", "--output", "gs://b/ds"], capsys)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "environment failure: ConnectionError" in lines[0], err


@pytest.mark.parametrize("sig,rc,says", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "stopped (SIGTERM)")])
def test_a_signal_to_the_job_stops_it_and_its_workers_in_one_line(sig, rc, says, tmp_path):
    """SIGINT to the radio process alone (not its group: `kill -INT`, a supervisor) hung forever in
    Beam's cleanup, which waits for workers that never got it; SIGTERM left the workers running
    after the main process died; a terminal's Ctrl-C printed 60-116 lines of thread tracebacks."""
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "ds"
    argv = [sys.executable, "-m", "radio.cli", "preprocess", "--input", str(DATA_DIR / "*.mp4"), "--output", str(out)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "runs").glob("*/job.log")):   # the pipeline has started
        time.sleep(0.2)
    time.sleep(1.0)
    workers = cli.descendants(p.pid)
    assert workers, "no local worker processes to stop"
    p.send_signal(getattr(signal, sig))
    try:
        _, err = p.communicate(timeout=60)
    finally:
        for pid in [p.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    text = err.replace("\r", "\n")
    assert p.returncode == rc, text[-2000:]
    assert "Traceback" not in text and says in text.strip().splitlines()[-1], text[-3000:]
    time.sleep(1.0)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and
             not open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"]
    assert not alive, f"worker processes left running: {alive}"
    done = subprocess.run([*argv, "--resume", "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "4 inputs = " in done.stdout, done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("command,key", [
    ("dub", "dub.chunk=0"), ("dub", "dub.threads=-2"), ("dub", "dub.crop_size=0"),
    ("preprocess", "decode.fps=0"), ("preprocess", "align.crop_size=0"), ("preprocess", "decode.backend=bogus"),
    ("preprocess", "output.frame_format=gif"), ("preprocess", "worker.stall_s=-1"),
    ("preprocess", "worker.backoff_s=-5"), ("preprocess", "worker.attempts=0"), ("preprocess", "decode.chunk=0"),
    ("preprocess", "output.jpeg_quality=1000"), ("preprocess", "decode.fps=30"),
])
def test_out_of_range_settings_are_mistakes_not_failed_jobs(command, key, tmp_path, capsys):
    """`dub.chunk=0` started the job and failed every pair ('Expected chunk >= 1'), exit 1;
    `decode.fps=0` made every source an internal_error reject with a done marker, and the corrected
    rerun was refused as 'made with another config'; `worker.stall_s=-1` killed every source."""
    name = key.split("=")[0].split(".")[-1]
    argv = {"dub": ["dub", "--checkpoint", "x.pt", "--input", str(tmp_path / "p.jsonl")],
            "preprocess": ["preprocess", "--input", CLIP]}[command]
    assert_mistake([*argv, "--output", str(tmp_path / "o"), "--set", key], capsys, tmp_path, says=f"{name}: expected")


def test_the_signal_handler_stops_only_what_the_command_started(tmp_path):
    """radio.cli.main in a notebook or a service: the handler must not SIGTERM the host's other
    children, must put the thread excepthook back, and ignores a second signal while stopping."""
    import signal
    import threading
    import time

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]   # killed below, never waited for
    hook = threading.excepthook
    before = subprocess.Popen(sleeper)
    restore = started = None
    try:
        restore = cli.stop_on_signals()
        started = subprocess.Popen(sleeper)
        with pytest.raises(cli.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN     # a second Ctrl-C while stopping
        assert started.wait(timeout=10) == -signal.SIGTERM
        assert before.poll() is None                                   # not ours: still running
    finally:
        if restore:
            restore()
        for child in (before, started):
            if child is not None:
                child.kill()
                child.wait()
    assert threading.excepthook is hook and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_ctrl_c_while_a_remote_job_runs_says_it_runs_on(tmp_path, monkeypatch, capsys):
    """On Dataflow, Ctrl-C only stops the waiting: 'run the same command again' started a second
    job racing the first on one output (compact and preprocess clear the other's temporaries)."""
    from pipelines import jobrun
    from radio import checks

    class Result:
        state = "RUNNING"

        def job_id(self):
            return "2026-11-30_12_00_00-123"

        def wait_until_finish(self, duration=None):
            raise KeyboardInterrupt

    class Remote:
        def run(self):
            return Result()

    def submit(args):
        jobrun.run(Remote(), log_uri=str(tmp_path / "job.log"), is_local=False)

    monkeypatch.setattr(checks, "command", submit)
    rc, out, err = run_cli(["compact", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")], capsys)
    assert rc == 130 and "job 2026-11-30_12_00_00-123 is still running" in err and "cancel" in err, err


@pytest.mark.parametrize("sig,rc", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_to_a_job_run_in_process_is_a_stop_not_a_failed_job(sig, rc, tmp_path):
    """One input runs in this process: the signal arrives inside the DoFn and Beam re-raises it as
    ``RuntimeError: radio.cli.Interrupted: 2 [while running 'ProcessSource']``, which was printed as
    'job failed', exit 1."""
    import signal
    import time

    long = tmp_path / "long.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "60", "-i", str(CLIP), "-c", "copy", str(long)], check=True)
    out = tmp_path / "ds"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "radio.cli", "preprocess", "--input", str(long), "--output", str(out),
                          "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "runs").glob("*/job.log")):
        time.sleep(0.2)
    time.sleep(3.0)                                   # inside ProcessSource, decoding
    p.send_signal(getattr(signal, sig))
    try:
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == rc, err[-2000:]
    assert "job failed" not in err and "finished work is kept" in err.strip().splitlines()[-1], err[-2000:]
