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

from dataclasses import dataclass, field

from preprocess import config as _cfg
from radio.model.config import ModelConfig

VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


@dataclass
class FilterConfig:
    """Row filters on the quality columns of the shards (``None`` disables a filter). A row whose
    column is null fails an active filter."""

    det_score_min: float | None = None        # det_score_min >= this
    landmark_jitter_max: float | None = None  # crop px / frame
    crop_shake_max: float | None = None       # output px / frame^2
    face_size_min: float | None = None        # median crop side in source px
    outside_frac_max: float | None = None     # mean fraction of the crop outside the frame
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
    sync_min_offset: int = 5        # train-sync negatives: audio shifted by >= this many frames
    seed: int = 0
    filters: FilterConfig = field(default_factory=FilterConfig)

    def __post_init__(self):
        if self.reference not in ("clip", "speaker", "auto"):
            raise ValueError(f"data.reference must be clip, speaker or auto. Got {self.reference!r}.")
        if not self.unsplit or self.piece_mib <= 0:
            raise ValueError("data.unsplit must be auto, error or a split name; data.piece_mib > 0.")
        if self.frames < 1 or self.shuffle_shards < 1 or self.samples_per_row < 0 or self.read_threads < 1:
            raise ValueError("data.frames, data.shuffle_shards and data.read_threads must be >= 1, samples_per_row >= 0.")


@dataclass
class LossConfig:
    """L_total = L1 + perceptual·Σλ_i·L1(VGG_i) + adv·softplus(-D(fake)) + sync·BCE(S(fake), 1)."""

    l1: float = 1.0
    perceptual: float = 1.0           # 0 disables the VGG term (and needs no VGG weights)
    vgg_layer_weights: tuple[float, ...] = VGG_WEIGHTS   # relu1_1 ... relu5_1
    vgg_uri: str | None = None        # torchvision VGG19 state_dict (vgg19-dcbb9e9d.pth)
    vgg_sha256: str | None = None
    adv: float = 0.07                 # λ_adv
    sync: float = 0.03                # λ_s; 0 disables S (no sync checkpoint needed)
    sync_uri: str | None = None       # checkpoint written by ``radio train-sync`` (sync.pt)
    sync_sha256: str | None = None
    r1_gamma: float = 10.0
    r1_every: int = 16                # lazy R1: every N steps, scaled by N (0: off)

    def __post_init__(self):
        if len(self.vgg_layer_weights) != 5:
            raise ValueError(f"loss.vgg_layer_weights needs 5 values (relu1_1..relu5_1). "
                             f"Got {self.vgg_layer_weights}.")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    d_lr: float | None = None         # None: same as lr
    grad_clip: float = 0.0            # 0: off


@dataclass
class RunConfig:
    steps: int = 210_000
    batch: int = 16                   # global samples per optimiser step (see module docstring)
    accumulate: int = 1               # micro-steps per optimiser step
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    amp: str = "auto"                 # auto (bf16 on CUDA, off on CPU) | bf16 | off
    ema_decay: float = 0.999          # EMA of G per step (ramped up: min(decay, (1+s)/(10+s)))
    log_every: int = 50
    image_every: int = 1000           # TensorBoard image grid (0: off)
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3
    tf32: bool = True

    def __post_init__(self):
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"run.amp must be auto, bf16 or off (fp16 is not supported). Got {self.amp!r}.")
        if self.batch < 1 or self.accumulate < 1 or self.steps < 0:
            raise ValueError("run.batch and run.accumulate must be >= 1, run.steps >= 0.")


@dataclass
class SyncPretrainConfig:
    """``radio train-sync``: S alone, BCE on in-sync / shifted pairs (half negatives)."""

    steps: int = 100_000
    batch: int = 64
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sync_pretrain: SyncPretrainConfig = field(default_factory=SyncPretrainConfig)

    def __post_init__(self):
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
        raise ValueError(f"run.batch {batch} must be divisible by world_size x accumulate = "
                         f"{world} x {accumulate} = {n}.")
    return batch // n
