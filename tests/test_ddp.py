"""Multi-rank training under torchrun (CPU, gloo): SIGTERM to the torchrun agent at random steps
checkpoints at the step the ranks agree on, and the resumed runs consume exactly the windows an
uninterrupted run consumes; the cursor table of a checkpoint across resumes and layout changes;
every model configuration through DDP steps; D's minibatch-stddev group fixed per rank."""
from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from preprocess import schema, shards
from preprocess.writer import write_table_atomic
from radio.train import checkpoint
from radio.model import RADIO, Discriminator, ModelConfig
from radio.train import build, dist
from radio.train.config import load_train_config
from radio.train.cursors import CursorTracker, resume_point
from radio.train.data import ShardStream

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke-cpu.yaml")


@pytest.fixture(scope="module")
def five_shards(sample_dataset, tmp_path_factory) -> str:
    """5 one-row shards (clip ids c0..c4): the two real segments, renamed."""
    real = [r for s in shards.list_shards(str(sample_dataset)) for r in shards.read_shard(s).to_pylist()]
    root = tmp_path_factory.mktemp("five_shards")
    for s in range(5):
        row = dict(real[s % len(real)], clip_id=f"c{s}")
        write_table_atomic(shards.rows_uri(str(root), f"src{s}"), [row], schema.SEGMENT_SCHEMA,
                           schema.file_metadata())
    return str(root)


# 2 ranks x 2 loader workers, micro-batch 2, a tiny model; checkpoints only on a stop and at the end
OVERRIDES = ["run.batch=4", "run.log_every=1", "run.checkpoint_every=1000", "run.keep_checkpoints=0",
             "run.image_every=0", "data.workers=2", "data.prefetch=1", "data.samples_per_row=3",
             "data.shuffle_shards=1", "model.resolution=64", "model.disc_final=4", "model.ablation=B"]


def _torchrun(data: str, out: Path, windows: Path, steps: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    sets = [x for o in OVERRIDES + [f"run.steps={steps}", f"run.windows_log={windows}"] for x in ("--set", o)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "radio.cli", "train", "--config", SMOKE, "--data", data, "--output", str(out), *sets]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)       # its own group: a failed test kills all of it
    _LAUNCHED.append(proc)
    return proc


_LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_torchrun():
    """A test that fails mid-run must not leave torchrun, its ranks and loader workers behind."""
    yield
    while _LAUNCHED:
        proc = _LAUNCHED.pop()
        try:    # the whole group, even when torchrun itself has exited: its ranks may not have
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _windows(folder: Path) -> dict[int, list[tuple]]:
    """rank -> [(step, consumer, epoch, chunk, offset, clip_id, frame), ...] in log order."""
    out = {}
    for rank in (0, 1):
        lines = (folder / f"windows-rank{rank}.tsv").read_text().splitlines()
        out[rank] = [tuple(int(x) if x.lstrip("-").isdigit() else x for x in ln.split("\t")) for ln in lines]
    return out


def _uninterrupted(data: str, steps: int) -> dict[int, list[tuple]]:
    """The windows an uninterrupted run takes, from the streams themselves: rank r's DataLoader hands
    out batches round-robin over its 2 workers (consumers 2r, 2r+1), one micro-batch of 2 per step."""
    cfg = load_train_config(SMOKE, OVERRIDES)
    stream = ShardStream(data, cfg.data, resolution=cfg.model.resolution, rank=0, world=2)
    out = {}
    for rank in (0, 1):
        samples = {k: list(itertools.islice(stream.iter_consumer(k, 4), steps)) for k in (2 * rank, 2 * rank + 1)}
        out[rank] = [(step, *samples[2 * rank + b % 2][2 * (b // 2) + i]["cursor"].tolist(),
                      samples[2 * rank + b % 2][2 * (b // 2) + i]["clip_id"],
                      int(samples[2 * rank + b % 2][2 * (b // 2) + i]["center"]))
                     for step in range(1, steps + 1) for b in [step - 1] for i in range(2)]
    return out


def test_sigterm_to_torchrun_three_times_loses_and_repeats_no_window(five_shards, tmp_path):
    seed = int(os.environ.get("RADIO_TEST_SEED", time.time_ns() % 1_000_000))
    rng, steps = random.Random(seed), 12
    why = f"(RADIO_TEST_SEED={seed})"

    out, windows = tmp_path / "b", tmp_path / "wb"
    resumed_from, t0 = 0, time.monotonic()
    for attempt in range(3):
        log = tmp_path / f"b{attempt}.log"
        proc = _torchrun(five_shards, out, windows, steps, log)
        target = min(resumed_from + rng.randint(1, 2), steps - 3)   # room for the stop step before the end
        assert target > resumed_from, (why, resumed_from)
        deadline = time.monotonic() + 120
        while not re.search(rf"step {target}/{steps}", log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, (why, log.read_text()[-3000:])
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))                    # somewhere inside the next step
        proc.send_signal(signal.SIGTERM)                     # what the VM's shutdown sends torchrun
        print(f"[{time.monotonic() - t0:.1f} s] signal")
        proc.wait(timeout=60)
        text = log.read_text()
        stops = re.findall(r"stopped at step (\d+) by (\S+): checkpoint written(?: ([\d.]+) s after the signal)?",
                           text)
        assert len(stops) == 2 and stops[0][0] == stops[1][0], (why, text[-4000:])     # both ranks, one step
        stop = int(stops[0][0])
        assert target <= stop < steps, (why, stop)
        assert all(s[1] == "SIGTERM" and float(s[2]) < 30 for s in stops), stops
        # no rank failed (no DataLoader worker killed): the one traceback is torchrun's own re-raise
        assert "killed by signal" not in text and text.count("Traceback") == 1, text[-4000:]
        assert text.rstrip().endswith("SignalException: Process %d got signal: 15" % proc.pid), text[-2000:]
        assert (out / "checkpoints" / f"step-{stop:09d}.pt").exists(), why
        if attempt:
            assert f"resuming from step {resumed_from} of {steps}" in text
        resumed_from = stop
        print(f"[{time.monotonic() - t0:.1f} s] attempt {attempt}: signal after step {target}, stopped at {stop}, "
              f"checkpoint {max(float(s[2]) for s in stops):.1f} s after the signal")

    last = _torchrun(five_shards, out, windows, steps, tmp_path / "b3.log")
    assert last.wait(timeout=120) == 0, (tmp_path / "b3.log").read_text()[-3000:]
    assert f"resuming from step {resumed_from} of {steps}" in (tmp_path / "b3.log").read_text()

    got, want = _windows(windows), _uninterrupted(five_shards, steps)
    for rank in (0, 1):
        assert got[rank] == want[rank], (why, rank)          # same windows, same steps, same order
    assert {w[5] for r in (0, 1) for w in want[r]} == {f"c{s}" for s in range(5)}
    last_cursor = {w[1]: list(w[1:5]) for r in (0, 1) for w in want[r]}
    data = checkpoint.load(checkpoint.latest(str(out))[1])["data"]
    assert data["cursors"] == [last_cursor[k] for k in range(4)] and data["next_slot"] == steps % 2


def test_a_rank_that_fails_mid_run_ends_the_run_at_once(sample_dataset, tmp_path):
    """Rank 1's only shard has no row its filters keep: it fails at its first batch while rank 0 is
    in step 1's all-reduce. The failed rank used to enter a barrier on its way out (never matched:
    both waited for gloo's 30 min timeout, a stuck billed machine); now it exits at once, rank 0
    sees its peer gone, and torchrun ends non-zero within seconds."""
    row = next(r for s in shards.list_shards(str(sample_dataset)) for r in shards.read_shard(s).to_pylist())
    data = tmp_path / "ds"
    write_table_atomic(shards.rows_uri(str(data), "good"), [dict(row, clip_id="good", crop_shake=0.5)],
                       schema.SEGMENT_SCHEMA, schema.file_metadata())
    write_table_atomic(shards.rows_uri(str(data), "shaky"), [dict(row, clip_id="shaky", crop_shake=9.0)],
                       schema.SEGMENT_SCHEMA, schema.file_metadata())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "radio.cli", "train", "--config", SMOKE, "--data", str(data), "--output", str(tmp_path / "run"),
           "--set", "run.steps=2", "--set", "data.filters.crop_shake_max=2"]
    log = tmp_path / "torchrun.log"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    _LAUNCHED.append(proc)
    t0 = time.monotonic()
    try:
        rc = proc.wait(timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("a failed rank left the run hanging:\n" + log.read_text()[-3000:])
    text = log.read_text()
    assert rc != 0 and time.monotonic() - t0 < 150, text[-3000:]
    errors = re.findall(r"^radio train: error: (.*)$", text, re.M)
    assert len(errors) == 1 and re.match(r"Data consumer [01] of 2 has no usable rows", errors[0]), text[-3000:]
    assert "step 1/2" not in text and not (tmp_path / "run" / "checkpoints").exists()


def test_cursor_table_one_row_per_consumer_across_resumes_and_layouts():
    # a rank tracks only its own consumers, whatever the checkpoint held for the others
    start = {0: (0, 0, 100), 1: (0, 0, 90), 2: (0, 0, 80), 3: (0, 0, 70)}
    rank1 = CursorTracker(rank=1, workers=2, start=start)
    assert rank1.cursors == {2: (0, 0, 80), 3: (0, 0, 70)}
    rank1.update({"cursor": torch.tensor([[3, 0, 0, 71], [3, 0, 0, 72]])})
    assert rank1.cursors[3] == (0, 0, 72) and rank1.next_slot == 0          # slot 1 served, slot 0 next
    rank1.update({"cursor": torch.tensor([[2, 1, 0, 0], [2, 1, 0, 1]])})
    state = rank1.state(consumers=4)                                        # one process: its own rows
    assert state == {"consumers": 4, "workers": 2, "cursors": [[2, 1, 0, 1], [3, 0, 0, 72]], "next_slot": 1}

    # the case: a table with one stale copy per rank (before this fix) resumes from the newest
    stale = {"consumers": 2, "cursors": [[0, 0, 0, 500], [1, 0, 0, 90], [0, 0, 0, 100], [1, 0, 0, 300]]}
    assert resume_point(stale, 2, 1) == ({0: (0, 0, 500), 1: (0, 0, 300)}, 0)
    table = {"consumers": 4, "workers": 2, "cursors": [[0, 2, 1, 5], [1, 3, 0, 0], [2, 2, 0, 9], [3, 2, 2, 1]],
             "next_slot": 1}
    cursors = {0: (2, 1, 5), 1: (3, 0, 0), 2: (2, 0, 9), 3: (2, 2, 1)}
    assert resume_point(table, 4, 2) == (cursors, 1)
    # 2 ranks x 2 workers -> 4 ranks x 1 worker: the same 4 streams continue, from slot 0
    assert resume_point(table, 4, 1) == (cursors, 0)
    # 8 consumers cannot continue 4 streams: all start the epoch after the newest one saved
    assert resume_point(table, 8, 2) == ({k: (4, 0, -1) for k in range(8)}, 0)
    assert resume_point({}, 4, 2) == ({}, 0)


def test_every_configuration_trains_under_ddp():
    """Ablations A-D, ViT(n, m), noise on and off, accumulation: two DDP steps each (tests/ddp_configs.py)."""
    from ddp_configs import CONFIGS                        # tests/ is on sys.path (pytest rootdir mode)

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_configs.py")]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    ok = [line for line in res.stdout.splitlines() if line.startswith("ok ")]
    assert [line.split(" (")[0] for line in ok] == ["ok " + " ".join(c) for c in CONFIGS], res.stdout
    # 4 windows over 2 ranks: 2 windows x 5 frames per D call, which group 4 does not divide
    assert "D's minibatch-stddev group is 2, not model.mbstd_group=4: each rank's D sees 10 frames" in res.stderr
    assert "D's minibatch-stddev group is 1, not model.mbstd_group=4: each rank's D sees 5 frames" in res.stderr


def test_disabled_noise_is_not_built():
    cfg = ModelConfig(resolution=64, disc_final=4, channels=(8, 8, 8, 16, 16, 16), style_dim=16, audio_dim=16,
                      noise=False)
    model = RADIO(cfg)
    assert not [n for n, _ in model.named_parameters() if ".noise." in n]
    assert len([n for n, _ in RADIO(ModelConfig(resolution=64, disc_final=4, channels=cfg.channels, style_dim=16,
                                                audio_dim=16)).named_parameters() if ".noise." in n]) == 6
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match="no noise inputs"):
        model(x, x, torch.zeros(1, 20, 80), noise=model.generator.make_noise(1))


def test_discriminator_group_is_fixed_per_rank_batch(caplog):
    cfg = ModelConfig(resolution=64, disc_final=4, channels=(8, 8, 8, 16, 16, 16))
    d = Discriminator(cfg, batch=10)
    assert d.group == 2 and d(torch.zeros(10, 3, 64, 64)).shape == (10, 1)
    with pytest.raises(ValueError, match="built for batches of 10 frames"):
        d(torch.zeros(9, 3, 64, 64))
    assert Discriminator(cfg, batch=16).group == 4 and Discriminator(cfg).group == 4
    # the paper's batch 16 on 8 GPUs: 2 windows x 5 frames per rank
    train = load_train_config(None, ["run.batch=16"])
    caplog.set_level("INFO", logger="radio.train")
    assert build.d_batch(train, dist.DistInfo(rank=0, world=8)) == 10
    assert "group is 2, not model.mbstd_group=4" in caplog.text
    caplog.clear()
    assert build.d_batch(train, dist.DistInfo(rank=0, world=4)) == 20 and "group is" not in caplog.text


def test_a_second_torchrun_on_a_locked_output_ends_within_seconds(sample_dataset, tmp_path):
    """Its main rank refused at once, but rank 1 waited in the rendezvous for it until torchrun killed
    it 30 s later. Every rank now checks the lock (only the main rank takes it)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom preprocess import outlock\n"
                               "with outlock.hold(sys.argv[1], 'train'):\n    print('held', flush=True)\n"
                               "    time.sleep(300)\n", str(tmp_path / "run")],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert holder.stdout.readline().strip() == "held"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "radio.cli", "train", "--config", SMOKE, "--data", str(sample_dataset),
           "--output", str(tmp_path / "run"), "--set", "run.steps=2"]
    log = tmp_path / "torchrun.log"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    _LAUNCHED.append(proc)
    try:
        t0 = time.monotonic()
        rc = proc.wait(timeout=120)
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    text = log.read_text()
    busy = re.findall(r"^radio train: error: radio train \(pid \d+ on .*\) is writing", text, re.M)
    # one line per rank that got to its check: once one rank has failed, torchrun stops the other
    # (SIGTERM), which on a loaded machine may still be importing torch: 1 or 2 lines
    assert rc != 0 and len(busy) in (1, 2) and took < 25, (took, text[-3000:])
