"""The training job on CPU: data stream (split, references, filters, resume), losses, VGG weights,
overfitting real frames, bitwise resume after SIGTERM, the `radio train` / `train-sync` CLI, and
two-rank DDP (gloo). Models are the narrow 96x96 ``configs/smoke-cpu.yaml`` ones."""
from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

import radio.cli
from preprocess import schema, shards
from preprocess.audio import mel_windows, model_input
from preprocess.weights import WeightsError, sha256_file
from preprocess.writer import write_table_atomic
from radio import losses
from radio.model import RADIO, SyncNet
from radio.train import build, checkpoint, cli as train_cli, data as data_mod, dist
from radio.train.config import DataConfig, FilterConfig, load_train_config, micro_batch
from radio.train.data import ShardStream, assign, make_loader, row_rejection
from radio.train.steps import micro_step, to_model_range
from radio.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke-cpu.yaml")
PAPER = str(ROOT / "configs" / "paper-192.yaml")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _real_rows(sample_dataset) -> list[dict]:
    return [r for s in shards.list_shards(str(sample_dataset)) for r in shards.read_shard(s).to_pylist()]


def _cut(row: dict, start: int, n: int, **changes) -> dict:
    """A shorter segment of a real row (frames start..start+n), with column changes."""
    out = dict(row)
    mel = np.frombuffer(row["mel"], np.float16).reshape(row["mel_shape"])[4 * start:4 * (start + n)]
    out.update(frames=row["frames"][start:start + n], landmarks=row["landmarks"][start:start + n],
               affine=row["affine"][start:start + n], detector_score=row["detector_score"][start:start + n],
               n_frames=n, mel=np.ascontiguousarray(mel).tobytes(), mel_shape=[4 * n, 80])
    out.update(changes)
    return out


@pytest.fixture(scope="module")
def shard_set(sample_dataset, tmp_path_factory):
    """5 shards x 2 rows of 16 real frames each (clip ids c<shard><row>), speakers of the real clips."""
    real = _real_rows(sample_dataset)
    root = tmp_path_factory.mktemp("shard_set")
    for s in range(5):
        rows = [_cut(real[(s + r) % 2], 8 * s + 20 * r, 16, clip_id=f"c{s}{r}") for r in range(2)]
        write_table_atomic(shards.rows_uri(str(root), f"src{s}"), rows, schema.SEGMENT_SCHEMA,
                           schema.file_metadata())
    return str(root)


def _cfg(**data) -> DataConfig:
    base = dict(samples_per_row=2, shuffle_shards=2, filters=FilterConfig(min_frames=10))
    base.update(data)
    return DataConfig(**base)


def _clips(stream: ShardStream, k: int, n: int) -> set[str]:
    return {s["clip_id"] for s in stream.iter_consumer(k, n, epochs=1)}


# ---- data ------------------------------------------------------------------------------------------
def test_shard_split_has_no_overlap_across_ranks_and_workers(shard_set, monkeypatch):
    all_clips = {f"c{s}{r}" for s in range(5) for r in range(2)}
    # 2 ranks x 2 workers = 4 consumers <= 5 shards: shard-level split.
    seen = []
    for rank in range(2):
        stream = ShardStream(shard_set, _cfg(), resolution=96, rank=rank, world=2)
        for wid in range(2):
            monkeypatch.setattr(data_mod, "get_worker_info", lambda w=wid: SimpleNamespace(num_workers=2, id=w))
            k, n = stream.consumer()
            assert (k, n) == (rank * 2 + wid, 4)
            seen.append(_clips(stream, k, n))
    monkeypatch.undo()
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(seen, 2))
    assert set().union(*seen) == all_clips
    assert assign(5, 1, 4) == ([1], False) and assign(5, 0, 4) == ([0, 4], False)

    # 6 consumers > 5 shards: row-level fallback, still every row exactly once.
    stream = ShardStream(shard_set, _cfg(), resolution=96)
    rows = [_clips(stream, k, 6) for k in range(6)]
    assert sum(len(r) for r in rows) == 10 and set().union(*rows) == all_clips
    # more consumers than rows: the empty consumer says so instead of hanging
    with pytest.raises(data_mod.DataError, match="no usable rows"):
        next(stream.iter_consumer(11, 12))


def test_dataloader_workers_are_disjoint_consumers(shard_set):
    stream = ShardStream(shard_set, _cfg(workers=2, prefetch=1), resolution=96)
    per_consumer: dict[int, set] = {}
    for batch in itertools.islice(iter(make_loader(stream, 2)), 8):
        (k,) = set(batch["cursor"][:, 0].tolist())           # a batch comes from one worker
        per_consumer.setdefault(k, set()).update(batch["clip_id"])
        assert batch["target"].shape == (2, 5, 3, 96, 96) and batch["target"].dtype == torch.uint8
        assert batch["mel"].shape == (2, 5, 20, 80)
    assert set(per_consumer) == {0, 1} and per_consumer[0].isdisjoint(per_consumer[1])


def test_references_never_inside_the_target_window(shard_set, sample_dataset):
    for mode in ("clip", "speaker"):
        stream = ShardStream(shard_set, _cfg(reference=mode, samples_per_row=0), resolution=96)
        rows = stream.load_chunk(list(range(5)), 0, 1, False)
        other = 0
        for seed in range(5):
            for idx, i, refs in stream.plan_chunk(rows, np.random.default_rng(seed)):
                assert 2 <= i <= rows[idx].n - 3
                for p, f in refs:
                    assert rows[p].speaker == rows[idx].speaker and 0 <= f < rows[p].n
                    assert p != idx or abs(f - i) > 2, (mode, i, f)
                    other += p != idx
        assert (other > 0) == (mode == "speaker")

    # realised samples from the real clips: content matches the row, references outside i-2..i+2
    stream = ShardStream(str(sample_dataset), _cfg(reference="clip", samples_per_row=4), resolution=96)
    real = {r["clip_id"]: schema.decode_segment(r) for r in _real_rows(sample_dataset)}
    for s in itertools.islice(stream.iter_consumer(0, 1), 8):
        i, seg = int(s["center"]), real[s["clip_id"]]
        assert s["ref_same_clip"].all() and ((s["ref_frame"] - i).abs() > 2).all()
        window = list(range(i - 2, i + 3))
        want = model_input(mel_windows(seg["mel"], window)).astype(np.float32)
        np.testing.assert_array_equal(s["mel"].numpy(), want)
        frame = cv2.resize(seg["frames"][i], (96, 96), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(s["target"][2].permute(1, 2, 0).numpy(), frame)
        ref = cv2.resize(seg["frames"][int(s["ref_frame"][0])], (96, 96), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(s["reference"][0].permute(1, 2, 0).numpy(), ref)


def test_quality_filters(sample_dataset, tmp_path):
    real = _real_rows(sample_dataset)[0]
    rows = [_cut(real, 0, 16, clip_id="good", det_score_min=0.9, crop_shake=0.5),
            _cut(real, 0, 16, clip_id="val", split="val"),
            _cut(real, 0, 16, clip_id="weak", det_score_min=0.1),
            _cut(real, 0, 16, clip_id="shaky", crop_shake=9.0),
            _cut(real, 0, 16, clip_id="unknown", crop_shake=None),
            _cut(real, 0, 8, clip_id="short")]
    write_table_atomic(shards.rows_uri(str(tmp_path), "q"), rows, schema.SEGMENT_SCHEMA, schema.file_metadata())
    filters = FilterConfig(det_score_min=0.5, crop_shake_max=2.0, min_frames=10)
    stream = ShardStream(str(tmp_path), _cfg(filters=filters), resolution=96)
    from collections import Counter
    stats = Counter()
    assert [r.clip_id for r in stream.load_chunk([0], 0, 1, False, stats)] == ["good"]
    assert stats == {"kept": 1, "split": 1, "det_score_min": 1, "crop_shake": 2, "min_frames": 1}
    assert _clips(stream, 0, 1) == {"good"}
    assert row_rejection({"split": "train", "n_frames": 20}, FilterConfig(), "train", 10) is None
    # a corpus preprocessed without a manifest has no split: it is training data, never validation
    assert row_rejection({"split": None, "n_frames": 20}, FilterConfig(), "train", 10) is None
    assert row_rejection({"split": None, "n_frames": 20}, FilterConfig(), "val", 10) == "split"
    assert _clips(ShardStream(str(tmp_path), _cfg(split=None, filters=FilterConfig(min_frames=10)),
                              resolution=96), 0, 1) == {"good", "val", "weak", "shaky", "unknown"}
    # the sound level and the count of faces in the picture (columns added within radio-dataset/1)
    more = tmp_path / "more"
    rows = [_cut(real, 0, 16, clip_id="loud", audio_rms_db=-20.0, n_faces=1),
            _cut(real, 0, 16, clip_id="quiet", audio_rms_db=-55.0, n_faces=1),
            _cut(real, 0, 16, clip_id="crowd", audio_rms_db=-20.0, n_faces=3)]
    write_table_atomic(shards.rows_uri(str(more), "q"), rows, schema.SEGMENT_SCHEMA, schema.file_metadata())
    filters = FilterConfig(audio_db_min=-40.0, n_faces_max=1, min_frames=10)
    assert _clips(ShardStream(str(more), _cfg(filters=filters), resolution=96), 0, 1) == {"loud"}


def test_sync_samples_shift_audio_by_at_least_five_frames(sample_dataset):
    stream = ShardStream(str(sample_dataset), _cfg(samples_per_row=0), resolution=96, mode="sync")
    rows = stream.load_chunk([0, 1], 0, 1, False)
    plans = stream.plan_chunk(rows, np.random.default_rng(0))
    labels = np.array([p[3] for p in plans])
    assert 0.4 < labels.mean() < 0.6
    for idx, i, j, label in plans:
        assert (j == i) if label else abs(j - i) >= 5
    s = next(stream.iter_consumer(0, 1))
    assert s["frames"].shape == (5, 3, 96, 96) and s["mel"].shape == (20, 80) and s["label"] in (0.0, 1.0)


def test_stream_restarts_exactly_after_a_cursor(shard_set):
    stream = ShardStream(shard_set, _cfg(samples_per_row=3, shuffle_shards=2), resolution=96)
    full = list(itertools.islice(stream.iter_consumer(0, 1), 40))          # crosses chunks and an epoch
    assert len({tuple(s["cursor"][1:3].tolist()) for s in full}) > 3
    for cut in (4, 29):
        cursor = tuple(full[cut]["cursor"][1:].tolist())
        again = list(itertools.islice(stream.iter_consumer(0, 1, cursor), 40 - cut - 1))
        for a, b in zip(full[cut + 1:], again):
            assert a["clip_id"] == b["clip_id"] and int(a["center"]) == int(b["center"])
            assert torch.equal(a["target"], b["target"]) and torch.equal(a["reference"], b["reference"])


# ---- losses -----------------------------------------------------------------------------------------
def test_gan_losses_and_r1():
    real, fake = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [-3.0]])
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(losses.d_logistic_loss(real, fake), sp(fake).mean() + sp(-real).mean())
    torch.testing.assert_close(losses.g_nonsaturating_loss(fake), sp(-fake).mean())
    w = torch.randn(1, 3, 4, 4)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    pred = (x * w).flatten(1).sum(1, keepdim=True)                   # dD/dx = w for every sample
    torch.testing.assert_close(losses.d_r1_loss(pred, x), w.pow(2).sum())


def test_vgg19_uses_torchvision_keys_and_loads_from_a_checked_file(tmp_path):
    vgg = losses.VGG19Features()
    convs = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)
    assert set(vgg.state_dict()) == {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    state = {k: torch.randn_like(v) for k, v in vgg.state_dict().items()}
    state.update({"features.30.weight": torch.zeros(1), "classifier.0.weight": torch.zeros(2, 2)})
    path = tmp_path / "vgg19-test.pth"
    torch.save(state, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = losses.load_vgg19(str(path), sha)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.features[28].weight, state["features.28.weight"])
    feats = loaded(torch.rand(1, 3, 96, 96) * 2 - 1)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 96, 96), (128, 48, 48), (256, 24, 24), (512, 12, 12),
                                                   (512, 6, 6)]
    with pytest.raises(WeightsError, match="sha256"):
        losses.load_vgg19(str(path), "0" * 64)


def test_missing_vgg_or_sync_weights_refuse_with_a_clear_error(sample_dataset, tmp_path):
    args = ["-v", "train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(tmp_path / "run")]
    with pytest.raises(WeightsError, match=r"VGG19.*loss\.vgg_uri.*loss\.perceptual=0"):
        radio.cli.main(args + ["--set", "loss.perceptual=1.0"])
    with pytest.raises(WeightsError, match=r"not found.*vgg19-dcbb9e9d"):
        radio.cli.main(args + ["--set", "loss.perceptual=1.0", "--set", f"loss.vgg_uri={tmp_path}/nope.pth"])
    with pytest.raises(WeightsError, match=r"train-sync.*loss\.sync=0"):
        radio.cli.main(args + ["--set", "loss.sync=0.03"])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_configs_load_and_batch_semantics():
    smoke, paper = load_train_config(SMOKE), load_train_config(PAPER)
    assert smoke.model.resolution == 96 and smoke.loss.perceptual == 0 and smoke.loss.sync == 0
    assert paper.model.resolution == 192 and paper.run.batch == 16 and paper.run.amp == "auto"
    assert (paper.loss.adv, paper.loss.sync, paper.loss.r1_gamma, paper.loss.r1_every) == (0.07, 0.03, 10, 16)
    assert tuple(paper.optim.betas) == (0.5, 0.999) and paper.optim.lr == 1e-4
    assert paper.loss.vgg_layer_weights == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert micro_batch(16, 4, 2) == 2
    with pytest.raises(ValueError, match="divisible"):
        micro_batch(16, 3, 1)
    with pytest.raises(ValueError, match="unknown key"):
        load_train_config(SMOKE, ["run.stepz=3"])


# ---- training ---------------------------------------------------------------------------------------
def _two_real_windows(dataset: str, cfg) -> dict:
    samples, seen = [], set()
    for s in ShardStream(dataset, cfg.data, resolution=96).iter_consumer(0, 1):
        if s["clip_id"] not in seen:
            seen.add(s["clip_id"])
            samples.append(s)
        if len(samples) == 2:
            return default_collate(samples)


def _scores(g, batch) -> tuple[float, float, float]:
    """L1, PSNR (dB, [0,1] scale) and lower-half L1 of G (eval mode) against the targets."""
    g.eval()
    with torch.no_grad():
        t = to_model_range(batch["target"])
        out = g(t, to_model_range(batch["reference"]), batch["mel"]).clamp(-1, 1)
    g.train()
    mse = ((out - t) / 2).pow(2).mean().item()
    return (out - t).abs().mean().item(), 10 * math.log10(1 / mse), (out - t)[..., 48:, :].abs().mean().item()


def test_overfits_a_few_real_frames(sample_dataset, tmp_path):
    cfg = load_train_config(SMOKE, ["optim.lr=1e-3", "run.steps=25", "run.log_every=5", "run.image_every=0",
                                    "run.checkpoint_every=1000"])
    torch.manual_seed(0)
    batch = _two_real_windows(str(sample_dataset), cfg)                 # 2 windows x 5 frames, 2 clips
    models, opts = build.build_radio(cfg, torch.device("cpu"), dist.DistInfo())
    l1_0, psnr_0, low_0 = _scores(models.generator, batch)
    result = train(cfg, models, opts, itertools.repeat(batch), output=str(tmp_path), device=torch.device("cpu"))
    l1_1, psnr_1, low_1 = _scores(models.generator, batch)
    print(f"overfit 25 steps: L1 {l1_0:.3f} -> {l1_1:.3f}, PSNR {psnr_0:.2f} -> {psnr_1:.2f} dB, "
          f"lower-half L1 {low_0:.3f} -> {low_1:.3f}")
    assert result.step == 25 and [h["step"] for h in result.history] == [5, 10, 15, 20, 25]
    assert psnr_1 > psnr_0 + 6.0
    assert l1_1 < 0.5 * l1_0 and low_1 < 0.7 * low_0
    assert result.history[-1]["l1"] < 0.5 * result.history[0]["l1"]


def test_resume_after_sigterm_is_bitwise_identical(sample_dataset, tmp_path):
    over = ["run.steps=6", "run.log_every=1", "run.checkpoint_every=100", "run.image_every=0",
            "loss.r1_every=2", "data.samples_per_row=3", "data.shuffle_shards=1"]
    cfg = load_train_config(SMOKE, over)
    data = str(sample_dataset)

    def logger(store):
        return lambda step, logs: store.append((step, {k: float(v) for k, v in logs.items()}))

    straight: list = []
    assert train_cli.run_radio(cfg, None, data, str(tmp_path / "a"), on_step=logger(straight)) == 0

    first: list = []

    def stop_at_3(step, logs):
        first.append((step, {k: float(v) for k, v in logs.items()}))
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)                        # what a preemptible VM sends

    out_b = str(tmp_path / "b")
    assert train_cli.run_radio(cfg, None, data, out_b, on_step=stop_at_3) == train_cli.PREEMPTED
    assert [s for s, _ in checkpoint.list_checkpoints(out_b)] == [3]
    cfg_b, ckpt = train_cli.resolve_config(SMOKE, over, out_b)
    assert ckpt["step"] == 3
    second: list = []
    assert train_cli.run_radio(cfg_b, ckpt, data, out_b, on_step=logger(second)) == 0

    assert [s for s, _ in first + second] == [1, 2, 3, 4, 5, 6]
    assert first + second == straight                                   # the loss curve continues exactly
    a = checkpoint.load(checkpoint.latest(str(tmp_path / "a"))[1])
    b = checkpoint.load(checkpoint.latest(out_b)[1])
    assert a["step"] == b["step"] == 6 and a["data"] == b["data"]
    for group in ("models", "optim"):
        for name in a[group]:
            _assert_same(a[group][name], b[group][name], f"{group}.{name}")


def test_resume_on_a_changed_dataset_starts_the_next_epoch(sample_dataset, tmp_path, caplog):
    """A cursor is a position in one listing of shards: on a copy of the dataset elsewhere the run
    continues exactly; with a shard added it starts the next epoch (nothing repeated), with a warning."""
    import shutil

    over = ["run.steps=2", "run.checkpoint_every=2", "run.image_every=0", "data.shuffle_shards=1"]
    ds = tmp_path / "ds"
    shutil.copytree(sample_dataset, ds)

    def windows(run):                                     # step -> [(consumer, epoch, chunk, offset, clip, frame)]
        out: dict = {}
        for line in (run / "w" / "windows-rank0.tsv").read_text().splitlines():
            step, *rest = line.split("\t")
            out.setdefault(int(step), []).append(tuple(rest))
        return out

    straight = tmp_path / "straight"
    cfg3 = load_train_config(SMOKE, over + ["run.steps=3", f"run.windows_log={straight / 'w'}"])
    assert train_cli.run_radio(cfg3, None, str(ds), str(straight)) == 0
    first = tmp_path / "first"
    cfg = load_train_config(SMOKE, over + [f"run.windows_log={first / 'w'}"])
    assert train_cli.run_radio(cfg, None, str(ds), str(first)) == 0
    ckpt = checkpoint.load(checkpoint.latest(str(first))[1])
    assert ckpt["data"]["listing"] == ShardStream(str(ds), cfg.data, resolution=96).listing

    moved = tmp_path / "moved"
    shutil.copytree(ds, moved)
    caplog.set_level(logging.WARNING, logger="radio.train")
    for name, data in (("same", moved), ("grown", ds)):
        if name == "grown":
            shard = sorted((ds / "rows").glob("*.parquet"))[0]
            shutil.copy(shard, ds / "rows" / "ffffffffffffffff.parquet")
        run = tmp_path / name
        shutil.copytree(first, run)
        cfg_r = load_train_config(SMOKE, over + ["run.steps=3", f"run.windows_log={run / 'w'}"])
        caplog.clear()
        assert train_cli.run_radio(cfg_r, checkpoint.load(checkpoint.latest(str(run))[1]), str(data), str(run)) == 0
        if name == "same":
            assert "shards changed" not in caplog.text
            assert windows(run)[3] == windows(straight)[3]
        else:
            last_epoch = max(int(w[1]) for w in windows(first)[2])
            assert "shards changed since the checkpoint" in caplog.text
            assert f"starts epoch {last_epoch + 1}" in caplog.text
            assert {int(w[1]) for w in windows(run)[3]} == {last_epoch + 1}
            assert checkpoint.load(checkpoint.latest(str(run))[1])["data"]["listing"] != ckpt["data"]["listing"]


def _assert_same(x, y, where):
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            _assert_same(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _assert_same(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


def test_radio_train_cli_end_to_end_then_resumes(sample_dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="radio.train")
    out = tmp_path / "run"
    args = ["train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(out),
            "--set", "run.checkpoint_every=2", "--set", "run.image_every=2", "--set", "run.log_every=1"]
    assert radio.cli.main(args + ["--set", "run.steps=3"]) == 0
    assert "starting a new run" in caplog.text and "it/s" in caplog.text and "s/step" in caplog.text
    assert [s for s, _ in checkpoint.list_checkpoints(str(out))] == [2, 3]
    assert list((out / "tb").glob("events.out.tfevents.*")) and (out / "config.yaml").exists()
    ckpt = torch.load(out / "checkpoints" / "step-000000003.pt", weights_only=True)
    assert ckpt["config"]["model"]["resolution"] == 96 and isinstance(ckpt["config"], dict)
    g = checkpoint.load_generator(str(out / "radio.pt"), allow_unverified=True)
    assert not g.training and g.cfg.resolution == 96

    caplog.clear()
    assert radio.cli.main(args + ["--set", "run.steps=5"]) == 0
    assert "resuming from step 3" in caplog.text and "step 5/5" in caplog.text
    assert [s for s, _ in checkpoint.list_checkpoints(str(out))] == [4, 5]       # keep_checkpoints: 2


def test_a_checkpoint_that_fails_to_load_for_want_of_memory_is_not_skipped(tmp_path, monkeypatch):
    """MemoryError while loading is the machine's: skipping the file as 'damaged' resumed from an
    older checkpoint and later overwrote the good newer one."""
    checkpoint.save(str(tmp_path), {"step": 1, "config": {}})

    def no_memory(*a, **k):
        raise MemoryError("cannot allocate 4 GiB")

    monkeypatch.setattr(torch, "load", no_memory)
    with pytest.raises(MemoryError):
        checkpoint.load_newest(str(tmp_path))


def test_a_bad_override_on_resume_is_one_line(sample_dataset, tmp_path, capsys):
    """Resuming without --config parsed --set on its own: a value that is not YAML was a PyYAML
    traceback (exit 1), a key under a value a TypeError."""
    base = ["train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(tmp_path / "run")]
    assert radio.cli.main([*base, "--set", "run.steps=1", "--set", "run.image_every=0"]) == 0
    resume = ["train", "--data", str(sample_dataset), "--output", str(tmp_path / "run")]
    for bad, says in (("optim.lr=[1", "the value is not valid YAML"), ("run.seed.x=1", "is not a section")):
        capsys.readouterr()
        assert radio.cli.main([*resume, "--set", bad]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err


@pytest.mark.parametrize("bad", ["optim.lr=nan", "optim.betas=[2,3]", "optim.d_lr=0", "data.workers=-1",
                                 "data.prefetch=0", "run.checkpoint_every=0", "run.log_every=0", "run.ema_decay=2",
                                 "run.accumulate=3", "loss.adv=-1", "sync_pretrain.lr=inf"])
def test_a_bad_value_is_one_line_before_any_work(sample_dataset, tmp_path, capsys, bad):
    """Values torch or the loop refused later: after the models were built and config.yaml written,
    with a traceback and exit 1 (Adam's 'Invalid learning rate: nan', the DataLoader's negative workers,
    a ZeroDivisionError after step 1 for checkpoint_every=0, a batch of 2 in 3 accumulation steps)."""
    out = tmp_path / "run"
    rc = radio.cli.main(["train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(out),
                         "--set", "run.steps=1", "--set", bad])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and bad.split("=")[0].rsplit(".", 1)[-1] in err, err
    assert not out.exists() or not any(p.name != ".radio.lock" for p in out.iterdir())


def test_a_radio_pt_as_the_sync_discriminator_is_one_line(sample_dataset, tmp_path, capsys):
    base = ["train", "--config", SMOKE, "--data", str(sample_dataset)]
    assert radio.cli.main([*base, "--output", str(tmp_path / "g"), "--set", "run.steps=1",
                           "--set", "run.image_every=0"]) == 0
    pt = tmp_path / "g" / "radio.pt"
    capsys.readouterr()
    rc = radio.cli.main([*base, "--output", str(tmp_path / "s"), "--set", "run.steps=1", "--set", "loss.sync=0.03",
                         "--set", f"loss.sync_uri={pt}", "--set", f"loss.sync_sha256={sha256_file(str(pt))}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "holds a RADIO generator (radio.pt), not S" in err, err


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(sample_dataset, tmp_path, caplog, capsys):
    """A checkpoint cut short, emptied (a VM reset after an unsynced rename) or without the format
    marker is skipped with a warning naming it; a later one that does not load never pushes the good
    ones out; none loading is one line, exit 2."""
    import shutil

    caplog.set_level(logging.INFO, logger="radio.train")
    base = ["train", "--config", SMOKE, "--data", str(sample_dataset), "--set", "run.image_every=0",
            "--set", "run.checkpoint_every=1"]
    first = tmp_path / "first"
    assert radio.cli.main([*base, "--output", str(first), "--set", "run.steps=2"]) == 0
    newest = Path("checkpoints") / "step-000000002.pt"
    good = (first / newest).read_bytes()
    damages = {"cut": good[:len(good) // 2], "empty": b"",
               "unmarked": checkpoint.to_bytes({"step": 2, "config": {}})}
    for name, data in damages.items():
        run = tmp_path / name
        shutil.copytree(first, run)
        (run / newest).write_bytes(data)
        caplog.clear()
        assert radio.cli.main([*base, "--output", str(run), "--set", "run.steps=2"]) == 0, name
        assert f"skipping checkpoint {run / newest}" in caplog.text and "resuming from step 1" in caplog.text
        assert checkpoint.load(str(run / newest))["step"] == 2                 # step 2 again, written whole

    run = tmp_path / "later"               # a damaged checkpoint after the good ones, keep_checkpoints=1
    shutil.copytree(first, run)
    (run / "checkpoints" / "step-000000009.pt").write_bytes(good[:1000])
    assert radio.cli.main([*base, "--output", str(run), "--set", "run.steps=3", "--set", "run.keep_checkpoints=1"]) == 0
    assert [s for s, _ in checkpoint.list_checkpoints(str(run))] == [3, 9]
    caplog.clear()
    assert radio.cli.main([*base, "--output", str(run), "--set", "run.steps=4"]) == 0
    assert "resuming from step 3" in caplog.text

    for p in (run / "checkpoints").glob("step-*.pt"):
        p.write_bytes(b"")
    capsys.readouterr()
    assert radio.cli.main([*base, "--output", str(run), "--set", "run.steps=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none of the 3 checkpoints" in err and "another --output" in err, err


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    from preprocess import uri as uri_lib

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("rename", str(a)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "run" / "x.pt"
    uri_lib.write_bytes_atomic(str(target), b"data")
    assert target.read_bytes() == b"data"
    (_, tmp), (_, renamed), (_, folder) = events
    assert events[0][0] == "fsync" and Path(tmp).name.startswith(".tmp-") and renamed == tmp
    assert events[2] == ("fsync", str(tmp_path / "run"))


def _enospc_on(monkeypatch, name: str) -> None:
    """os.fsync fails with ENOSPC for files whose name contains ``name`` (a full disk, found when the
    data is flushed: delayed allocation reports it there)."""
    import errno

    real = os.fsync

    def fsync(fd):
        if name in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_failed_atomic_writes_leave_no_temporary(tmp_path, monkeypatch):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    from preprocess import uri as uri_lib

    _enospc_on(monkeypatch, "x.pt")
    with pytest.raises(OSError, match="No space"):
        uri_lib.write_bytes_atomic(str(tmp_path / "x.pt"), b"data")
    assert list(tmp_path.iterdir()) == []

    def broken_mv(self, *a, **k):
        raise ConnectionError("network down")

    monkeypatch.setattr(MemoryFileSystem, "mv", broken_mv)
    with pytest.raises(ConnectionError):
        uri_lib.write_bytes_atomic("memory://failwrite/x.pt", b"data")
    fs = fsspec.filesystem("memory")
    assert fs.ls("/failwrite", detail=False) == []


def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_no_temporary(sample_dataset, tmp_path, monkeypatch,
                                                                        capsys, caplog):
    caplog.set_level(logging.INFO, logger="radio.train")
    out = tmp_path / "run"
    args = ["train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(out),
            "--set", "run.image_every=0", "--set", "run.checkpoint_every=1", "--set", "run.steps=2"]
    with monkeypatch.context() as m:
        _enospc_on(m, "step-000000002.pt")
        assert radio.cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("radio train: job failed: no space left for "), err
    assert str(out) in err and re.search(r"Checkpoints of this run take \d+\.\d MiB each", err), err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000000001.pt"]

    # what killed writes leave: removed when the run resumes (the run's own names only)
    (out / "checkpoints" / ".tmp-0123-step-000000002.pt").write_bytes(b"x" * 1000)
    (out / f".tmp-{'ab' * 16}-radio.pt").write_bytes(b"x" * 1000)
    (out / ".tmp-notours.txt").write_bytes(b"kept")
    assert radio.cli.main(args) == 0
    assert "removed 2 temporaries" in caplog.text and "resuming from step 1" in caplog.text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000000001.pt", "step-000000002.pt"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".tmp-")) == [".tmp-notours.txt"]


def test_a_resumed_run_uses_the_configs_learning_rates_and_betas(caplog):
    """Adam's load_state_dict brought back the saved lr/betas while the log said the new values applied."""
    caplog.set_level(logging.INFO, logger="radio.train")
    cpu, one = torch.device("cpu"), dist.DistInfo()
    models, opts = build.build_radio(load_train_config(SMOKE, []), cpu, one)
    net, _, opt_s = build.build_sync(load_train_config(SMOKE, []), cpu)
    ckpt = {"step": 5, "models": {"generator": models.generator.state_dict(), "ema": models.ema.state_dict(),
                                  "disc": models.disc.state_dict(), "sync": net.state_dict()},
            "optim": {"g": opts.g.state_dict(), "d": opts.d.state_dict(), "sync": opt_s.state_dict()}}
    new = load_train_config(SMOKE, ["optim.lr=5e-4", "optim.d_lr=2e-4", "optim.betas=[0.9,0.99]",
                                    "sync_pretrain.lr=3e-4", "sync_pretrain.betas=[0.8,0.9]"])
    models, opts = build.build_radio(new, cpu, one)
    build.restore(ckpt, {"generator": models.generator, "ema": models.ema, "disc": models.disc},
                  {"g": opts.g, "d": opts.d}, consumers=1)
    net, _, opt_s = build.build_sync(new, cpu)
    build.restore(ckpt, {"sync": net}, {"sync": opt_s}, consumers=1)
    for opt, lr, betas in ((opts.g, 5e-4, (0.9, 0.99)), (opts.d, 2e-4, (0.9, 0.99)), (opt_s, 3e-4, (0.8, 0.9))):
        assert [(g["lr"], tuple(g["betas"])) for g in opt.param_groups] == [(lr, betas)]
    assert "optimiser g: lr 0.0001 -> 0.0005, betas (0.5, 0.999) -> (0.9, 0.99)" in caplog.text
    assert "optimiser d: lr 0.0001 -> 0.0002" in caplog.text and "optimiser sync: lr 0.0001 -> 0.0003" in caplog.text
    caplog.clear()
    build.restore(ckpt, {"sync": net}, {"sync": build.build_sync(load_train_config(SMOKE, []), cpu)[2]}, consumers=1)
    assert "optimiser" not in caplog.text                       # nothing changed, nothing said


def test_tensorboard_shows_each_step_once_after_a_resume(sample_dataset, tmp_path):
    """A run killed after logging step 3 but before its checkpoint resumes from step 2 and logs 3 again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(out),
            "--set", "run.image_every=0", "--set", "run.checkpoint_every=2", "--set", "run.log_every=1"]
    assert radio.cli.main([*args, "--set", "run.steps=3"]) == 0
    (out / "checkpoints" / "step-000000003.pt").unlink()
    assert radio.cli.main([*args, "--set", "run.steps=4"]) == 0
    board = EventAccumulator(str(out / "tb"))
    board.Reload()
    assert [e.step for e in board.Scalars("loss/l1")] == [1, 2, 3, 4]


def test_a_noise_free_run_from_before_noise_scales_were_dropped_resumes(sample_dataset, tmp_path, caplog):
    """A `model.noise: false` checkpoint written when G still built its (never trained) noise scales:
    resuming drops them from G and the EMA and renumbers G's Adam state by parameter name."""
    caplog.set_level(logging.INFO, logger="radio.train")
    base = ["--config", SMOKE, "--data", str(sample_dataset), "--set", "run.image_every=0"]
    assert radio.cli.main(["train", *base, "--output", str(tmp_path / "new"), "--set", "run.steps=2"]) == 0
    ckpt = checkpoint.load(checkpoint.latest(str(tmp_path / "new"))[1])
    cfg = load_train_config(SMOKE, [])
    with torch.device("meta"):
        names = [n for n, _ in RADIO(cfg.model).named_parameters()]     # the order Adam's state uses
    noise = {i for i, n in enumerate(names) if n.endswith(".noise.weight")}
    assert noise and all(i in ckpt["optim"]["g"]["state"] for i in noise)
    old = dict(ckpt, config={**ckpt["config"], "model": {**ckpt["config"]["model"], "noise": False}})
    for name in ("generator", "ema"):                 # what the old code left: scales at 0, no Adam state
        old["models"][name] = {k: torch.zeros_like(v) if k.endswith(".noise.weight") else v
                               for k, v in ckpt["models"][name].items()}
    old["optim"]["g"]["state"] = {i: v for i, v in ckpt["optim"]["g"]["state"].items() if i not in noise}
    out = tmp_path / "old"
    checkpoint.save(str(out), {k: v for k, v in old.items() if k != "format"})

    cfg_off = load_train_config(SMOKE, ["model.noise=false"])
    up = checkpoint.upgrade_noise_free(old, cfg_off.model)
    models, opts = build.build_radio(cfg_off, torch.device("cpu"), dist.DistInfo())
    build.restore(up, {"generator": models.generator, "ema": models.ema, "disc": models.disc},
                  {"g": opts.g, "d": opts.d}, consumers=1)
    restored = dict(models.generator.named_parameters())
    assert len(restored) == len(names) - len(noise)
    for i, name in enumerate(names):
        if i not in noise:
            assert torch.equal(restored[name], ckpt["models"]["generator"][name]), name
            got = opts.g.state[restored[name]]
            assert torch.equal(got["exp_avg"], ckpt["optim"]["g"]["state"][i]["exp_avg"]), name
            assert torch.equal(got["exp_avg_sq"], ckpt["optim"]["g"]["state"][i]["exp_avg_sq"]), name

    caplog.clear()
    args = ["train", *base, "--output", str(out), "--set", "model.noise=false", "--set", "run.steps=3"]
    assert radio.cli.main(args) == 0
    assert "resuming from step 2" in caplog.text and f"dropping {len(noise)} noise scales" in caplog.text
    assert [s for s, _ in checkpoint.list_checkpoints(str(out))][-1] == 3


def test_a_run_that_fails_with_loader_workers_exits(sample_dataset, tmp_path):
    """Loader workers ignore SIGTERM; left to interpreter exit (an error's traceback kept the loader
    alive) they made the job print its error and then wait on them forever. Also: a config that
    leaves no rows is the user's mistake in one line, though found inside a worker."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "radio.cli", "train", "--config", SMOKE, "--data", str(sample_dataset),
           "--output", str(tmp_path / "run"), "--set", "run.steps=1", "--set", "data.workers=2",
           "--set", "data.filters.face_size_min=100000"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        _, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("radio train printed its error and did not exit (loader workers left running)")
    last = [ln for ln in err.splitlines() if " INFO " not in ln]
    assert p.returncode == 2 and len(last) == 1, err[-3000:]
    assert last[0].startswith("radio train: error: Data consumer") and "face_size" in last[0]


def test_a_consumer_dealt_no_row_is_refused_before_any_step(sample_dataset, tmp_path, capsys):
    """Fewer rows than consumers (ranks x loader workers): found when the data stream is made, alike on
    every rank (not by the hungry consumer alone at step 1 while the other ranks wait for it)."""
    row = _real_rows(sample_dataset)[0]
    one = tmp_path / "one"
    write_table_atomic(shards.rows_uri(str(one), "only"), [row], schema.SEGMENT_SCHEMA, schema.file_metadata())
    cfg = _cfg()
    for rank in (0, 1):
        unfed = ShardStream(str(one), cfg, resolution=96, rank=rank, world=2).unfed
        assert unfed.startswith("Data consumer 1 of 2 has no rows to read") and "1 row(s) in 1 shard(s)" in unfed
    assert ShardStream(str(one), cfg, resolution=96).unfed is None
    assert ShardStream(str(one), _cfg(workers=1), resolution=96).unfed is None
    rc = radio.cli.main(["train", "--config", SMOKE, "--data", str(one), "--output", str(tmp_path / "run"),
                         "--set", "run.steps=1", "--set", "data.workers=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("radio train: error: Data consumer 1 of 2 has no rows to read"), err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run" / "checkpoints").exists()


def test_training_error_stops_the_loader_workers(sample_dataset, tmp_path):
    import multiprocessing

    cfg = load_train_config(SMOKE, ["run.steps=3", "data.workers=2", "run.image_every=0"])

    def fail(step, logs):
        raise RuntimeError("a bug at step 1")

    with pytest.raises(RuntimeError, match="a bug at step 1"):
        train_cli.run_radio(cfg, None, str(sample_dataset), str(tmp_path / "run"), on_step=fail)
    assert multiprocessing.active_children() == []


@pytest.fixture(scope="module")
def sync_export(sample_dataset, tmp_path_factory):
    """``radio train-sync`` for 3 steps -> (RUN/sync.pt, its sha256)."""
    out = tmp_path_factory.mktemp("sync_run")
    rc = radio.cli.main(["train-sync", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(out),
                         "--set", "sync_pretrain.steps=3", "--set", "sync_pretrain.batch=4",
                         "--set", "run.log_every=1"])
    assert rc == 0
    path = out / "sync.pt"
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_sync_writes_an_s_that_radio_train_uses_frozen(sample_dataset, sync_export, tmp_path):
    uri, sha = sync_export
    assert checkpoint.load(uri)["format"] == "radio-sync/1"
    cfg = load_train_config(SMOKE, ["loss.sync=0.03", f"loss.sync_uri={uri}", f"loss.sync_sha256={sha}"])
    models, _ = build.build_radio(cfg, torch.device("cpu"), dist.DistInfo())
    s = models.sync
    assert isinstance(s, SyncNet) and not s.training and not any(p.requires_grad for p in s.parameters())
    before = {k: v.clone() for k, v in s.state_dict().items()}
    batch = _two_real_windows(str(sample_dataset), cfg)
    t, r = to_model_range(batch["target"]), to_model_range(batch["reference"])
    logs, _ = micro_step(models, cfg, t, r, batch["mel"], scale=1.0, r1=True, amp=None)
    assert {"l1", "adv", "sync", "g", "d", "r1"} <= set(logs) and torch.isfinite(logs["sync"])
    assert all(p.grad is None for p in s.parameters())
    assert all(torch.equal(before[k], v) for k, v in s.state_dict().items())      # BN stats untouched
    assert all(p.grad is not None for p in models.generator.parameters())

    rc = radio.cli.main(["train", "--config", SMOKE, "--data", str(sample_dataset), "--output",
                         str(tmp_path / "run"), "--set", "run.steps=2", "--set", "loss.sync=0.03",
                         "--set", f"loss.sync_uri={uri}", "--set", f"loss.sync_sha256={sha}"])
    assert rc == 0


def test_resuming_another_model_or_kind_is_one_line_before_any_work(sample_dataset, sync_export, tmp_path, capsys,
                                                                     caplog):
    caplog.set_level(logging.INFO, logger="radio.train")
    sync_out = str(Path(sync_export[0]).parent)
    radio_out = str(tmp_path / "run")
    base = ["--config", SMOKE, "--data", str(sample_dataset), "--set", "run.image_every=0"]
    assert radio.cli.main(["train", *base, "--output", radio_out, "--set", "run.steps=1"]) == 0
    cases = [(["train-sync", *base, "--output", radio_out], f"{radio_out} holds 'radio' checkpoints, not train-sync"),
             (["train", *base, "--output", sync_out], f"{sync_out} holds 'sync' checkpoints, not RADIO"),
             (["train", *base, "--output", radio_out, "--set", "model.style_dim=32", "--set", "run.steps=2"],
              "model config differs from this run's: model.style_dim (64 -> 32). Resume"),
             (["train-sync", *base, "--output", str(tmp_path / "new"), "--set", "data.frames=7"],
              "train-sync needs data.frames == model.sync.frames (5). Got 7.")]
    for argv, want in cases:
        capsys.readouterr()
        caplog.clear()
        assert radio.cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and want in err, (argv, err)
        assert "starting a new run" not in caplog.text and "resuming" not in caplog.text
    assert [s for s, _ in checkpoint.list_checkpoints(radio_out)] == [1]


def test_two_rank_ddp_keeps_ranks_in_sync(sample_dataset, tmp_path):
    """torchrun, 2 CPU ranks (gloo): every checkpoint checks that G, EMA and D agree across ranks.
    The finished ranks end without the interpreter's finalization (``dist.leave``), where gloo's
    worker threads could abort a finished run (SIGABRT): a marker exit handler never runs in them."""
    out = tmp_path / "ddp"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        "if 'RANK' in os.environ:\n"
        "    atexit.register(lambda: print('rank', os.environ['RANK'], 'finalized', file=sys.stderr, flush=True))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "radio.cli", "train", "--config", SMOKE, "--data", str(sample_dataset), "--output", str(out),
           "--set", "run.steps=2", "--set", "run.batch=4", "--set", "run.accumulate=2",
           "--set", "run.checkpoint_every=1", "--set", "loss.r1_every=1", "--set", "run.log_every=1"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 consumers (2 ranks x 1 workers); batch 4 = 2 ranks x 2 accumulation x 1 windows" in res.stderr
    assert "finalized" not in res.stderr and "radio.pt: " in res.stdout, res.stderr[-3000:]
    ckpt = checkpoint.load(checkpoint.latest(str(out))[1])
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2
    assert sorted(c[0] for c in ckpt["data"]["cursors"]) == [0, 1]


def test_train_reads_and_writes_fsspec_uris(shard_set, tmp_path, caplog):
    """Dataset and run folder on an object store (fsspec memory://, as gs:// via gcsfs)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in Path(shard_set, "rows").glob("*.parquet"):
        fs.pipe(f"/trainfs/ds/rows/{p.name}", p.read_bytes())
    caplog.set_level(logging.INFO, logger="radio.train")
    args = ["train", "--config", SMOKE, "--data", "memory://trainfs/ds", "--output", "memory://trainfs/run",
            "--set", "run.checkpoint_every=1", "--set", "run.image_every=1"]
    try:
        assert radio.cli.main(args + ["--set", "run.steps=1"]) == 0
        assert radio.cli.main(args + ["--set", "run.steps=2"]) == 0
        assert "resuming from step 1" in caplog.text and "5 shards in memory://trainfs/ds" in caplog.text
        assert [s for s, _ in checkpoint.list_checkpoints("memory://trainfs/run")] == [1, 2]
        assert fs.exists("/trainfs/run/radio.pt") and fs.exists("/trainfs/run/config.yaml")
        assert any("tfevents" in p for p in fs.ls("/trainfs/run/tb", detail=False))
    finally:
        fs.rm("/trainfs", recursive=True)
