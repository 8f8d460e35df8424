"""The networks an evaluation worker needs, loaded once (a Beam DoFn's ``setup()``).

* the landmark backend (``preprocess.landmarks``, dlib by default): reference face tracks, the
  generated video's face boxes for Sync, and the landmarks of both videos for LMD;
* LPIPS v0.1 AlexNet (:func:`eval.metrics.lpips.load_lpips`) unless ``lpips.enabled`` is false;
* SyncNet (:func:`eval.metrics.syncnet.load_syncnet`) unless ``sync.enabled`` is false;
* S3FD (:class:`eval.metrics.s3fd.S3FD`) for Sync's face boxes when its weights are configured
  (``sync.s3fd_uri``, or the face_alignment backend's ``sfd_uri``); otherwise Sync uses the
  landmark backend's tracker boxes, labelled as the fallback in every row;
* dlib's face recognition ResNet (:class:`eval.metrics.identity.FaceIdentity`, from
  ``face_recognition_models`` or ``identity_weights_uri``) unless ``identity_check`` is off or
  the framing check is (``face_check_frames=0``): it measures on the framing check's frames.

Weights come only from configured URIs with a verified sha256; a missing one raises
:class:`preprocess.weights.WeightsError` naming the file, how to get it and how to switch the
metric off. Nothing is ever scored with an unloaded (random) network.
"""
from __future__ import annotations

from dataclasses import dataclass

import fsspec

from eval.config import EvalConfig
from preprocess.weights import WeightsError

_OFF_HINT = {"lpips": "or switch LPIPS off with --set lpips.enabled=false",
             "sync": "or switch Sync-C/D off with --set sync.enabled=false",
             "identity": "or switch the identity check off with --set identity_check=off"}


@dataclass
class EvalModels:
    landmarks: object            # preprocess.landmarks.LandmarkBackend
    lpips: object | None         # eval.metrics.lpips.LPIPSAlex
    syncnet: object | None       # eval.metrics.syncnet.SyncNet
    lpips_label: str | None = None
    sync_detector: object | None = None  # eval.metrics.s3fd.S3FD when its weights are configured
    identity: object | None = None  # eval.metrics.identity.FaceIdentity (None: loaded on first use, see identity_model)

    def describe(self) -> dict:
        """Weight hashes and labels recorded in every score row."""
        lm = self.landmarks.describe()
        out = {"landmark_backend": lm["backend"], "landmark_weights": dict(lm["weights"]),
               "landmark_fitting": landmark_fitting(self.landmarks)}
        if self.lpips is not None:
            out.update(self.lpips.weights_info)
            out["lpips_label"] = self.lpips_label
        if self.syncnet is not None:
            out["syncnet_sha256"] = self.syncnet.weights_info["syncnet_sha256"]
            out["sync_official_weights"] = self.syncnet.weights_info["official_weights"]
            out["sync_label"] = self.syncnet.weights_info["weights"]
        if self.identity is not None:
            out.update(self.identity.weights_info)
        return out


def identity_wanted(cfg: EvalConfig) -> bool:
    """The identity check runs: not off, and the framing check (whose frames it uses) is on."""
    return cfg.identity_check != "off" and cfg.face_check_frames > 0


def identity_model(cfg: EvalConfig, models: EvalModels):
    """``models.identity``, loaded into ``models`` on first use when :func:`identity_wanted`
    (models built by hand, without :func:`load_models`); None when the check is off."""
    if not identity_wanted(cfg):
        return None
    if models.identity is None:
        from eval.metrics.identity import FaceIdentity

        models.identity = FaceIdentity(cfg.identity_weights_uri, cfg.identity_weights_sha256)
    return models.identity


def landmark_fitting(backend) -> dict:
    """How LMD's landmarks are fitted: the backend and its fitting parameters (part of the protocol).

    dlib: ``fit_boxes`` fits from the box and shifted copies, averaged (``fit_shift`` of the side);
    face_alignment: one FAN fit per box, ``flip_input`` averaging the mirrored heatmaps."""
    out = {"backend": backend.name, "fit_boxes": int(getattr(backend, "fit_boxes", 1))}
    for k in ("fit_shift", "flip_input", "upsample"):
        if hasattr(backend, k):
            out[k] = getattr(backend, k)
    return out


#: glibc ``mallopt`` parameter: allocations at least this size are mmapped, and unmapped on free
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def bound_heap() -> bool:
    """Keep a long evaluation's memory flat: allocations of 1 MiB and more (decoded 1080p frames,
    crops, network activations) are mmapped and go back to the OS when freed.

    glibc otherwise raises its mmap threshold to the largest freed block (up to 32 MiB), so these
    come from the heap, which fragments and grows: a 64 s 1080p pair peaked at 1,013 MiB with
    RSS creeping up through the scoring pass, 808 MiB and flat with this (bench/README.md).
    Process-wide and idempotent; a no-op (False) off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def _with_hint(e: WeightsError, metric: str) -> WeightsError:
    return WeightsError(f"{e} ({_OFF_HINT[metric]}.)")


def load_models(cfg: EvalConfig) -> EvalModels:
    """Build every network ``cfg`` enables. Raises WeightsError (with the fix) on missing weights."""
    from preprocess.landmarks import get_backend

    bound_heap()  # an evaluation worker: flat memory on long pairs
    backend_args = dict(cfg.landmarks.backend_args)
    if cfg.landmarks.backend == "dlib":
        # LMD wants the steadiest landmarks: average 5 shifted-box fits (preprocess fits once)
        backend_args.setdefault("fit_boxes", 5)
    backend = get_backend(cfg.landmarks.backend, **backend_args)
    lpips_model, lpips_label = None, None
    if cfg.lpips.enabled:
        from eval.metrics.lpips import load_lpips

        try:
            lpips_model = load_lpips(cfg.lpips.backbone_uri, cfg.lpips.backbone_sha256, cfg.lpips.linear_uri,
                                     cfg.lpips.linear_sha256, device=cfg.device)
        except WeightsError as e:
            raise _with_hint(e, "lpips") from e
        official = lpips_model.weights_info["official_weights"]
        lpips_label = cfg.lpips.label or ("lpips v0.1 alex (official)" if official else "unofficial")
    syncnet = None
    if cfg.sync.enabled:
        from eval.metrics.syncnet import load_syncnet

        try:
            syncnet = load_syncnet(cfg.sync.weights_uri, cfg.sync.weights_sha256, label=cfg.sync.label,
                                   device=cfg.device)
        except WeightsError as e:
            raise _with_hint(e, "sync") from e
    detector = None
    s3fd_uri, s3fd_sha = cfg.sync.s3fd_weights(cfg.landmarks)
    if syncnet is not None and s3fd_uri:
        from eval.metrics.s3fd import S3FD

        detector = S3FD(s3fd_uri, s3fd_sha, device=cfg.device, conf_th=cfg.sync.s3fd_conf, scale=cfg.sync.s3fd_scale)
    models = EvalModels(landmarks=backend, lpips=lpips_model, syncnet=syncnet, lpips_label=lpips_label,
                        sync_detector=detector)
    identity_model(cfg, models)              # dlib's face recognition ResNet, when the check runs
    return models


def _check_workers_have(uri_mod, name: str, uri: str, metric: str, workers_see_local_files: bool) -> None:
    if not workers_see_local_files and uri_mod.is_local(uri):
        raise WeightsError(f"{name}: {uri!r} is a file on this machine, which Dataflow workers installing radio "
                           "from --setup_file/--extra_package do not have: copy it to a bucket and set its gs:// "
                           "URI (or run an --sdk_container_image holding it, infra/dataflow/Dockerfile) "
                           f"({_OFF_HINT[metric]}.)")


def check_weights(cfg: EvalConfig, *, workers_see_local_files: bool = True) -> None:
    """Cheap driver-side check before a job starts: every enabled metric has a weight URI that
    exists and a sha256 to verify it against (workers verify the digest when they load).

    ``workers_see_local_files`` False (Dataflow workers that install radio from --setup_file or
    --extra_package): a weight file on this machine is refused, since those workers do not have
    it; the LPIPS linear weights' default (inside this machine's lpips install) included."""
    from preprocess import uri as uri_mod
    from eval.metrics.lpips import ALEXNET_HOW_TO_GET, LINEAR_HOW_TO_GET, default_linear_uri
    from eval.metrics.syncnet import HOW_TO_GET as SYNC_HOW_TO_GET

    wanted = []
    if cfg.lpips.enabled:
        wanted += [("lpips", "LPIPS AlexNet backbone (lpips.backbone_uri)", cfg.lpips.backbone_uri,
                    cfg.lpips.backbone_sha256, ALEXNET_HOW_TO_GET),
                   ("lpips", "LPIPS v0.1 alex linear weights (lpips.linear_uri)",
                    cfg.lpips.linear_uri or default_linear_uri(), cfg.lpips.linear_sha256, LINEAR_HOW_TO_GET)]
    if cfg.sync.enabled:
        wanted.append(("sync", "SyncNet weights (sync.weights_uri)", cfg.sync.weights_uri,
                       cfg.sync.weights_sha256, SYNC_HOW_TO_GET))
    s3fd_uri, s3fd_sha = cfg.sync.s3fd_weights(cfg.landmarks)
    if cfg.sync.enabled and s3fd_uri:
        from eval.metrics.s3fd import HOW_TO_GET as S3FD_HOW_TO_GET

        fs, path = fsspec.core.url_to_fs(s3fd_uri)
        if not fs.exists(path):
            raise WeightsError(f"S3FD weights (sync.s3fd_uri): weight file not found at {s3fd_uri!r}. "
                               f"{S3FD_HOW_TO_GET}")
        _check_workers_have(uri_mod, "S3FD weights (sync.s3fd_uri)", s3fd_uri, "sync", workers_see_local_files)
    if identity_wanted(cfg):
        from eval.metrics.identity import HOW_TO_GET as IDENTITY_HOW_TO_GET, packaged_identity_path

        if cfg.identity_weights_uri:
            wanted.append(("identity", "identity check (identity_weights_uri)", cfg.identity_weights_uri,
                           cfg.identity_weights_sha256, IDENTITY_HOW_TO_GET))
        else:
            packaged_identity_path()      # the file inside face_recognition_models (workers install it too)
    for metric, name, uri, sha, how in wanted:
        if not uri:
            raise WeightsError(f"{name}: no weight file configured. {how} ({_OFF_HINT[metric]}.)")
        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.exists(path):
            raise WeightsError(f"{name}: weight file not found at {uri!r}. {how} ({_OFF_HINT[metric]}.)")
        _check_workers_have(uri_mod, name, uri, metric, workers_see_local_files)
        if not sha:
            raise WeightsError(f"{name}: no sha256 configured for {uri!r}; set it in the config.")
