"""The training job's one config: typed dataclasses, loaded from YAML + ``--set key=value``.

``radio train`` and ``radio train-sync`` read the same file: ``model`` (``radio.model.ModelConfig``),
``data``, ``loss``, ``optim`` and ``run`` drive RADIO training; ``sync_pretrain`` drives the sync
discriminator's pretraining (which reuses ``model.sync``, ``data`` and ``run``'s logging settings).

Batch semantics: ``run.batch`` is the **global** number of samples per optimiser step, summed over
all ranks and accumulation micro-steps. A RADIO sample is one T=5 window: 5 consecutive target
frames, their 5 mel windows and 5 reference frames, so ``batch: 16`` puts 80 frames through G and
D per step. Each rank draws ``batch / (world_size * accumulate)`` samples per micro-step (it must
divide). The checkpoint stores the whole config as a plain dict (``to_dict``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from preprocess import config as _cfg
from radio.model.config import ModelConfig

VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def _finite(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number. Got {value!r}.")


def _adam(obj, *rates: str) -> None:
    """Adam's learning rates (> 0, finite; None where allowed) and ``betas`` (each in [0, 1)), checked
    here: torch's own check came after the models were built, with a traceback."""
    _finite(obj, *rates)
    for name in rates:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name}: expected a learning rate > 0. Got {value!r}.")
    if len(obj.betas) != 2 or not all(0 <= b < 1 for b in obj.betas):
        raise ValueError(f"betas: expected two values in [0, 1). Got {obj.betas!r}.")


@dataclass
class FilterConfig:
    """Row filters on the quality columns of the shards (``None`` disables a filter). A row whose
    column is null fails an active filter."""

    det_score_min: float | None = None        # det_score_min >= this
    landmark_jitter_max: float | None = None  # crop px / frame
    crop_shake_max: float | None = None       # output px / frame^2
    face_size_min: float | None = None        # median crop side in source px
    outside_frac_max: float | None = None     # mean fraction of the crop outside the frame
    audio_db_min: float | None = None         # audio_rms_db >= this (dBFS; null in shards before the column)
    n_faces_max: int | None = None            # n_faces <= this (1: one face in the picture; null in older shards)
    min_frames: int = 10                      # segments shorter than this are skipped


@dataclass
class DataConfig:
    split: str | None = "train"     # keep rows whose ``split`` equals this (None: all rows)
    unsplit: str = "auto"           # the split of rows without one: auto (train when no row of the
    #                                 dataset has a split, else refuse), error, or a split name
    #                                 (e.g. train, or eval to keep them out of training)
    strict: bool = False            # a shard failing its footer check stops training (else: skipped)
    read_threads: int = 8           # parallel piece reads per consumer (fsspec)
    piece_mib: float = 4.0          # read unit: consecutive row groups of a shard up to this size
    #                                 (a per-source shard is one piece; `radio compact` row groups)
    frames: int = 5                 # T consecutive target frames per sample (S needs 5)
    reference: str = "auto"         # 'clip' | 'speaker' | 'auto' (speaker when the row names one)
    samples_per_row: int = 8        # windows drawn from one segment per epoch (0: every window)
    shuffle_shards: int = 16        # shuffle buffer: all samples of this many pieces (a per-source
    #                                 shard, or ~4 MiB of a compacted one), fully mixed
    workers: int = 0                # DataLoader worker processes per rank
    prefetch: int = 2               # batches each worker keeps ready
    start_method: str = "spawn"     # how loader workers start: spawn | forkserver | fork. Not fork: a rank
    #                                 has run pyarrow's and gloo's threads by then, and a forked worker can
    #                                 inherit a lock held mid-task (a rare hang at start). Not forkserver: its
    #                                 server dies with the process group on SIGTERM (a traceback at exit)
    sync_min_offset: int = 5        # train-sync negatives: audio shifted by >= this many frames
    seed: int = 0                   # seed of shuffling and window sampling
    filters: FilterConfig = field(default_factory=FilterConfig)

    def __post_init__(self):
        if self.start_method not in ("forkserver", "spawn", "fork"):
            raise ValueError(f"data.start_method must be forkserver, spawn or fork. Got {self.start_method!r}.")
        if self.reference not in ("clip", "speaker", "auto"):
            raise ValueError(f"data.reference must be clip, speaker or auto. Got {self.reference!r}.")
        if not self.unsplit or self.piece_mib <= 0:
            raise ValueError("data.unsplit must be auto, error or a split name; data.piece_mib > 0.")
        if self.frames < 1 or self.shuffle_shards < 1 or self.samples_per_row < 0 or self.read_threads < 1:
            raise ValueError("data.frames, data.shuffle_shards and data.read_threads must be >= 1, samples_per_row >= 0.")
        _cfg.check_min(self, workers=0, prefetch=1, sync_min_offset=1)


@dataclass
class LossConfig:
    """L_total = L1 + perceptual·Σλ_i·L1(VGG_i) + adv·softplus(-D(fake)) + sync·BCE(S(fake), 1)."""

    l1: float = 1.0                   # weight of the L1 reconstruction loss
    perceptual: float = 1.0           # 0 disables the VGG term (and needs no VGG weights)
    vgg_layer_weights: tuple[float, ...] = VGG_WEIGHTS   # relu1_1 ... relu5_1
    vgg_uri: str | None = None        # torchvision VGG19 state_dict (vgg19-dcbb9e9d.pth)
    vgg_sha256: str | None = None     # sha256 of the vgg_uri file
    adv: float = 0.07                 # λ_adv
    sync: float = 0.03                # λ_s; 0 disables S (no sync checkpoint needed)
    sync_uri: str | None = None       # checkpoint written by ``radio train-sync`` (sync.pt)
    sync_sha256: str | None = None    # sha256 of the sync_uri file
    r1_gamma: float = 10.0            # R1 penalty weight γ
    r1_every: int = 16                # lazy R1: every N steps, scaled by N (0: off)

    def __post_init__(self):
        if len(self.vgg_layer_weights) != 5:
            raise ValueError(f"loss.vgg_layer_weights needs 5 values (relu1_1..relu5_1). "
                             f"Got {self.vgg_layer_weights}.")
        _finite(self, "l1", "perceptual", "adv", "sync", "r1_gamma")
        _cfg.check_min(self, l1=0, perceptual=0, adv=0, sync=0, r1_gamma=0, r1_every=0)
        if min(self.vgg_layer_weights) < 0 or not all(math.isfinite(w) for w in self.vgg_layer_weights):
            raise ValueError(f"vgg_layer_weights: expected finite values >= 0. Got {self.vgg_layer_weights}.")


@dataclass
class OptimConfig:
    lr: float = 1e-4                  # Adam learning rate (G; D too unless d_lr)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas
    d_lr: float | None = None         # None: same as lr
    grad_clip: float = 0.0            # 0: off

    def __post_init__(self):
        _adam(self, "lr", "d_lr")
        _finite(self, "grad_clip")
        _cfg.check_min(self, grad_clip=0)


@dataclass
class RunConfig:
    steps: int = 210_000              # optimiser steps of the whole run
    batch: int = 16                   # global samples per optimiser step (see module docstring)
    accumulate: int = 1               # micro-steps per optimiser step
    seed: int = 0                     # seed of weights and noise
    device: str = "auto"              # auto | cpu | cuda
    amp: str = "auto"                 # auto (bf16 on CUDA, off on CPU) | bf16 | off
    ema_decay: float = 0.999          # EMA of G per step (ramped up: min(decay, (1+s)/(10+s)))
    log_every: int = 50               # steps between log lines / TensorBoard scalars
    image_every: int = 1000           # TensorBoard image grid (0: off)
    checkpoint_every: int = 2000      # steps between checkpoints (and on SIGTERM)
    keep_checkpoints: int = 3         # newest checkpoints kept
    max_skipped_steps: int = 50       # a run whose newest N steps all had inf/NaN gradients (each skipped) stops (0: never)
    tf32: bool = True                 # TF32 matmuls on CUDA
    windows_log: str | None = None    # debug: a local folder; each rank appends the windows it consumed
    #                                   (step, consumer, cursor, clip_id, frame) to windows-rank<R>.tsv

    def __post_init__(self):
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"run.amp must be auto, bf16 or off (fp16 is not supported). Got {self.amp!r}.")
        if self.batch < 1 or self.accumulate < 1 or self.steps < 0:
            raise ValueError("run.batch and run.accumulate must be >= 1, run.steps >= 0.")
        _cfg.check_min(self, log_every=1, checkpoint_every=1, image_every=0, keep_checkpoints=0,
                       max_skipped_steps=0)
        if not 0 <= self.ema_decay <= 1:
            raise ValueError(f"ema_decay: expected a value in [0, 1]. Got {self.ema_decay!r}.")


@dataclass
class SpeedConfig:
    """Speed switches for the training step (``radio.train.speed``), all off by default. Each one
    keeps what is computed up to float rounding (tests/test_speed.py checks losses and gradients
    against the plain path); bench/device.sh measures them one by one on a GPU."""

    channels_last: bool = False       # G, D, VGG19 and S (and their inputs) in NHWC memory layout
    compile: bool = False             # torch.compile G, VGG19 and D's non-R1 passes (R1 stays eager)
    compile_backend: str = "inductor"  # torch.compile backend (tests use aot_eager on CPU)
    fold_blur: bool = False           # [1,3,3,1] blur folded into the resampling convolutions
    fused_act: bool = False           # bias + LeakyReLU as one autograd node saving only its output
    r1_frames: int = 0                # R1 on this many frames per T-frame window (0: every frame)
    r1_amp: bool = False              # R1's forward/double backward under the run's autocast (bf16)
    r1_reuse_forward: bool = False    # with r1_frames 0: R1 from D's own forward on the real frames
    broadcast_buffers: bool = True    # DDP broadcast of G's buffers each step (they are constant)

    def __post_init__(self):
        if self.r1_frames < 0:
            raise ValueError(f"speed.r1_frames must be >= 0. Got {self.r1_frames}.")
        if self.r1_reuse_forward and self.r1_frames:
            raise ValueError("speed.r1_reuse_forward needs speed.r1_frames: 0 (D's forward covers every frame).")


@dataclass
class SyncPretrainConfig:
    """``radio train-sync``: S alone, BCE on in-sync / shifted pairs (half negatives)."""

    steps: int = 100_000  # optimiser steps of train-sync
    batch: int = 64       # global samples per step
    lr: float = 1e-4      # Adam learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas

    def __post_init__(self):
        _adam(self, "lr")
        _cfg.check_min(self, steps=0, batch=1)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    sync_pretrain: SyncPretrainConfig = field(default_factory=SyncPretrainConfig)

    def __post_init__(self):
        if self.speed.r1_frames > self.data.frames:
            raise ValueError(f"speed.r1_frames must be <= data.frames ({self.data.frames}). "
                             f"Got {self.speed.r1_frames}.")
        if self.loss.sync and self.data.frames != self.model.sync.frames:
            raise ValueError(f"The sync loss needs data.frames == model.sync.frames "
                             f"({self.model.sync.frames}). Got {self.data.frames}.")


def load_train_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """TrainConfig from a YAML file (any fsspec URI) and ``a.b=value`` overrides; unknown keys fail."""
    return _cfg.load(TrainConfig, path, overrides)


def to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict (what checkpoints store; ``torch.load(weights_only=True)`` reads it)."""
    return _cfg.to_dict(cfg)


def from_dict(data: dict) -> TrainConfig:
    return _cfg.from_dict(TrainConfig, data, where="checkpoint config")


def micro_batch(batch: int, world: int, accumulate: int) -> int:
    """Samples per rank per micro-step; raises when ``batch`` does not split evenly."""
    n = world * accumulate
    if batch % n:
        raise _cfg.ConfigError(f"run.batch {batch} must be divisible by world_size x accumulate = "
                               f"{world} x {accumulate} = {n}.")
    return batch // n
