"""Training never learns from, nor saves, inf/NaN: a step with a non-finite gradient changes
nothing (G, D, EMA, Adam), a run whose newest steps are all such stops in one line before any
further save, and checkpoints or exports with inf/NaN weights (saved by radio before this guard)
are skipped on resume and refused by dub. Smoke-size models on real frames."""
from __future__ import annotations

import copy
import itertools
import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

import radio.cli
from radio.train import build, checkpoint, dist, guard
from radio.train.config import load_train_config
from radio.train.data import ShardStream
from radio.train.trainer import train, train_step

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke-cpu.yaml")
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(*over):
    return load_train_config(SMOKE, ["run.image_every=0", "run.log_every=1", "loss.r1_every=2", *over])


def _windows(dataset, cfg) -> dict:
    samples = list(itertools.islice(ShardStream(str(dataset), cfg.data, resolution=96).iter_consumer(0, 1), 2))
    return default_collate(samples)


def _poisoned(batch: dict) -> dict:
    bad = dict(batch)
    bad["mel"] = torch.full_like(batch["mel"], float("nan"))
    return bad


def _state(models, opts) -> dict:
    return copy.deepcopy({"g": models.generator.state_dict(), "ema": models.ema.state_dict(),
                          "d": models.disc.state_dict(), "opt_g": opts.g.state_dict(), "opt_d": opts.d.state_dict()})


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_a_step_with_a_nan_gradient_changes_nothing(sample_dataset, clip):
    cfg = _cfg(f"optim.grad_clip={clip}")
    torch.manual_seed(0)
    models, opts = build.build_radio(cfg, CPU, dist.DistInfo())
    batch = _windows(sample_dataset, cfg)
    assert opts.g.param_groups[0]["fused"] and opts.d.param_groups[0]["fused"]
    train_step(models, opts, cfg, iter([batch]), 0, CPU, None)             # Adam has state from here on
    before = _state(models, opts)
    skips = guard.SkipCount(5)
    logs, _ = train_step(models, opts, cfg, iter([_poisoned(batch)]), 1, CPU, None, skips=skips)
    assert torch.isnan(logs["g"]) and torch.isnan(logs["d"])
    assert _same(before, _state(models, opts))                             # weights, EMA, moments, step counts
    assert skips.check(2, lambda: "-") == 1
    train_step(models, opts, cfg, iter([batch]), 2, CPU, None, skips=skips)  # a finite step still trains
    after = _state(models, opts)
    assert not _same(before["g"], after["g"]) and not _same(before["ema"], after["ema"])
    assert all(bool(torch.isfinite(t).all()) for t in after["g"].values() if t.is_floating_point())
    assert skips.check(3, lambda: "-") == 0


def test_a_diverged_run_stops_before_saving_again(sample_dataset, tmp_path, caplog):
    """Two finite steps, then every step NaN: steps 3-5 are skipped, the check at step 5 stops the
    run (max_skipped_steps 3) before its save; the checkpoint of step 4 holds step 2's weights."""
    cfg = _cfg("run.steps=20", "run.checkpoint_every=2", "run.keep_checkpoints=2", "run.max_skipped_steps=3")
    torch.manual_seed(0)
    models, opts = build.build_radio(cfg, CPU, dist.DistInfo())
    batch = _windows(sample_dataset, cfg)
    states = {}
    out = str(tmp_path / "run")

    def batches():
        yield batch
        yield batch
        states[2] = _state(models, opts)
        while True:
            yield _poisoned(batch)

    with caplog.at_level(logging.WARNING, logger="radio.train"):
        with pytest.raises(guard.Diverged) as e:
            train(cfg, models, opts, batches(), output=out, device=CPU)
    msg = str(e.value)
    assert "the last 3 steps (to step 5)" in msg and "step-000000004.pt" in msg and "\n" not in msg
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2, 4]
    four = checkpoint.load(checkpoint.checkpoint_uri(out, 4))
    assert _same(four["models"]["generator"], states[2]["g"]) and _same(four["models"]["ema"], states[2]["ema"])
    assert _same(four["optim"]["g"]["state"], states[2]["opt_g"]["state"])
    assert "step 3: 1 skipped for non-finite gradients" in caplog.text
    g = checkpoint.load_generator(str(tmp_path / "run" / "radio.pt"), allow_unverified=True)
    assert all(bool(torch.isfinite(p).all()) for p in g.parameters())


def test_the_cli_ends_a_diverged_run_in_one_line(sample_dataset, tmp_path, capsys):
    """A learning rate far too high: the first step wrecks G, every later gradient is inf/NaN."""
    out = tmp_path / "run"
    rc = radio.cli.main(["train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(out),
                         "--set", "run.steps=30", "--set", "run.log_every=1", "--set", "run.image_every=0",
                         "--set", "run.checkpoint_every=2", "--set", "run.max_skipped_steps=2",
                         "--set", "optim.lr=1e6"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("radio train")]
    assert len(lines) == 1 and "training diverged" in lines[0] and "Traceback" not in err
    for _, uri in checkpoint.list_checkpoints(str(out)):
        assert guard.state_dict_non_finite(checkpoint.load(uri)) == []


def _nan_copy(state: dict) -> dict:
    bad = copy.deepcopy(state)
    w = next(k for k, v in bad["models"]["generator"].items() if v.is_floating_point())
    bad["models"]["generator"][w][...] = float("nan")
    return bad


def test_resume_skips_a_checkpoint_with_nan_weights_and_dub_refuses_one(sample_dataset, tmp_path, caplog):
    out = tmp_path / "run"
    assert radio.cli.main(["train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(out),
                           "--set", "run.steps=2", "--set", "run.image_every=0"]) == 0
    good = checkpoint.load(checkpoint.checkpoint_uri(str(out), 2))
    bad = _nan_copy({**good, "step": 3})
    checkpoint.save(str(out), bad, keep=0)                                # what radio wrote before the guard
    with caplog.at_level(logging.WARNING, logger="radio.train"):
        assert checkpoint.load_newest(str(out))["step"] == 2
    assert "step-000000003.pt: inf/NaN weights" in caplog.text

    export = tmp_path / "nan.pt"
    torch.save({"format": "radio-generator/1", "step": 3, "model_config": good["config"]["model"],
                "model": bad["models"]["generator"]}, export)
    with pytest.raises(ValueError, match="inf/NaN weights"):
        checkpoint.load_generator(str(export), allow_unverified=True)


def test_a_resumed_adam_keeps_the_fused_skip(sample_dataset):
    """Checkpoints of Adam without ``fused`` (saved before the guard) load into the fused Adam,
    which must stay fused: only it skips on the device."""
    cfg = _cfg()
    models, opts = build.build_radio(cfg, CPU, dist.DistInfo())
    train_step(models, opts, cfg, iter([_windows(sample_dataset, cfg)]), 0, CPU, None)
    saved = opts.g.state_dict()
    saved["param_groups"][0]["fused"] = None
    build.load_optimizer(opts.g, saved, "g")
    assert opts.g.param_groups[0]["fused"] is True


def test_an_unfused_optimiser_skips_with_a_sync():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.5)
    p.grad = torch.tensor([1.0, float("inf"), 1.0])
    guard.step(opt, guard.found_inf([p.grad.norm()]))
    assert torch.equal(p.detach(), torch.ones(3))
    p.grad = torch.ones(3)
    guard.step(opt, guard.found_inf([p.grad.norm()]))
    assert torch.equal(p.detach(), torch.full((3,), 0.5))


def test_train_sync_skips_steps_that_would_poison_its_batchnorm_statistics(sample_dataset, tmp_path, capsys):
    """S's audio encoder has BatchNorm: an inf/NaN forward updated its running statistics even with
    the optimiser step skipped, and the run then stopped at its next save with 'inf/NaN weights'."""
    out = tmp_path / "sync"
    rc = radio.cli.main(["train-sync", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(out),
                         "--set", "sync_pretrain.steps=30", "--set", "sync_pretrain.lr=1e9", "--set", "run.log_every=2",
                         "--set", "run.max_skipped_steps=4", "--set", "run.checkpoint_every=2"])
    err = capsys.readouterr().err
    assert rc == 1 and "training diverged" in err and "Lower sync_pretrain.lr" in err and "not saving" not in err
    saved = checkpoint.list_checkpoints(str(out))
    assert saved
    for _, uri in saved:
        ckpt = checkpoint.load(uri)
        assert any(k.endswith("running_var") for k in ckpt["models"]["sync"])
        assert guard.state_dict_non_finite(ckpt) == []


@pytest.mark.parametrize("fail_at", [1, 13])
def test_a_step_out_of_memory_is_one_line_that_says_what_to_change(sample_dataset, tmp_path, capsys, monkeypatch,
                                                                    fail_at):
    """torch's out-of-memory error (a traceback with allocator statistics) at the first step is the
    config's: one line naming the micro-batch and run.accumulate; after a while, fragmentation."""
    from radio.train import trainer

    calls = []
    real = trainer.micro_step

    def micro_step(*a, **k):
        calls.append(1)
        if len(calls) == fail_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.25 GiB. GPU 0 has a total "
                                         "capacity of 79.10 GiB of which 1.5 GiB is free.\nOf the allocated ...")
        return real(*a, **k)

    monkeypatch.setattr(trainer, "micro_step", micro_step)
    rc = radio.cli.main(["train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(tmp_path / "r"),
                         "--set", "run.steps=20", "--set", "run.image_every=0", "--set", "run.batch=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert f"out of CPU memory in step {fail_at}, 4 windows x 5 frames at 96x96 per micro-step" in err[0]
    assert "raise run.accumulate" in err[0] and "Tried to allocate 2.25 GiB" in err[0]
    assert ("expandable_segments" in err[0]) == (fail_at > 11)


def test_rows_whose_mel_holds_nan_are_skipped_by_the_reader(sample_dataset, tmp_path, caplog):
    """Datasets written before preprocess refused NaN samples (a float WAV holding NaN) have rows
    with NaN mel: each batch with one would be a skipped step. The reader leaves such rows out."""
    import numpy as np
    from collections import Counter

    from preprocess import schema, shards
    from preprocess.writer import write_table_atomic
    from radio.train.config import DataConfig, FilterConfig

    rows = [r for s in shards.list_shards(str(sample_dataset)) for r in shards.read_shard(s).to_pylist()][:2]
    bad = dict(rows[0], clip_id="nan-row")
    mel = np.frombuffer(bad["mel"], np.float16).copy()
    mel[100] = np.nan
    bad["mel"] = mel.tobytes()
    write_table_atomic(shards.rows_uri(str(tmp_path), "src0"), [bad, rows[1]], schema.SEGMENT_SCHEMA,
                       schema.file_metadata())
    stream = ShardStream(str(tmp_path), DataConfig(split=None, samples_per_row=2, shuffle_shards=1,
                                                   filters=FilterConfig(min_frames=10)), resolution=96)
    stats = Counter()
    with caplog.at_level(logging.WARNING, logger="radio.train.data"):
        kept = stream.load_piece(0, 0, 1, False, stats)
    assert [r.clip_id for r in kept] == [rows[1]["clip_id"]]
    assert stats == Counter({"kept": 1, "non_finite_mel": 1})
    assert "nan-row" in caplog.text
    assert {s["clip_id"] for s in stream.iter_consumer(0, 1, epochs=1)} == {rows[1]["clip_id"]}


def test_weights_with_nan_are_never_saved(tmp_path):
    from radio.train import trainer

    good, bad = torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)
    bad.running_var[0] = float("inf")                      # a buffer counts too
    trainer.refuse_non_finite({"generator": good}, 3, str(tmp_path))
    with pytest.raises(guard.Diverged, match=r"not saving step 3: inf/NaN weights in disc; the newest checkpoint "
                                             r"is none"):
        trainer.refuse_non_finite({"generator": good, "disc": bad}, 3, str(tmp_path))
