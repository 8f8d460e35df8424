"""Fast CPU tests of radio.model (resolution 96 unless a 192 number is the point)."""
from __future__ import annotations

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F

from preprocess.config import from_dict
from radio.model import (RADIO, Attention, ContentEncoder, Discriminator, Generator, ModelConfig, ResNetSE34L,
                         StyleEncoder, SyncNet, ViTBlock, ViTConfig, mask_lower_half, model_summary, sync_bce,
                         to_sync_input)
from radio.model.discriminator import minibatch_stddev
from radio.model.generator import ModulatedConv2d
from radio.model.layers import Upsample

R = 96
# Narrow widths for the tests that are about wiring, not sizes (same layers, 96x96).
SMALL = dict(resolution=R, channels=(16, 32, 32, 64, 64, 64), style_dim=64, audio_dim=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _inputs(b=2, r=R, t=None):
    shape = (b, 3, r, r) if t is None else (b, t, 3, r, r)
    mel_shape = (b, 20, 80) if t is None else (b, t, 20, 80)
    return torch.rand(shape) * 2 - 1, torch.rand(shape) * 2 - 1, torch.randn(mel_shape)


# ---- config ----------------------------------------------------------------------------------
def test_config_from_plain_dict_and_checkpoint_roundtrip():
    cfg = from_dict(ModelConfig, {"resolution": 96, "ablation": "D", "vit": {"n": 1, "m": 2, "dim": 64},
                                  "channels": [16, 32, 32, 64, 64, 64], "style_dim": 64})
    assert cfg.vit == ViTConfig(n=1, m=2, dim=64) and cfg.fidelity_layers == (6,) and cfg.w_dim == 576
    assert ModelConfig().w_dim == 1024
    assert ModelConfig(ablation="A").w_dim == 512
    assert ModelConfig().patch_div == 32 and ModelConfig(resolution=96).patch_div == 16
    with pytest.raises(ValueError, match="ablation"):
        ModelConfig(ablation="E")
    with pytest.raises(ValueError, match="2..6"):
        ModelConfig(vit=ViTConfig(n=6))

    model = RADIO(cfg).eval()
    buf = io.BytesIO()
    torch.save({"config": dataclasses.asdict(cfg), "model": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    again = RADIO(from_dict(ModelConfig, ckpt["config"])).eval()
    again.load_state_dict(ckpt["model"])
    x, ref, mel = _inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(again(x, ref, mel), model(x, ref, mel))


# ---- encoders ----------------------------------------------------------------------------------
def test_encoders_at_192_give_12x12x512_content():
    x = torch.rand(1, 3, 192, 192) * 2 - 1
    with torch.no_grad():
        feats = ContentEncoder()(x)
        f_s, style = StyleEncoder()(x)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 192, 192), (128, 96, 96), (256, 48, 48), (512, 24, 24), (512, 12, 12), (512, 12, 12)]
    assert [tuple(f.shape[1:]) for f in style] == [tuple(f.shape[1:]) for f in feats[:5]]
    assert f_s.shape == (1, 512)


def test_encoders_at_96_and_lower_half_mask():
    cfg = ModelConfig(resolution=R)
    assert cfg.encoder_sizes == (96, 48, 24, 12, 6, 6)
    x = torch.rand(2, 3, R, R) * 2 - 1
    m = mask_lower_half(x)
    assert torch.equal(m[..., :48, :], x[..., :48, :]) and not m[..., 48:, :].any()
    assert torch.equal(mask_lower_half(m), m)
    with torch.no_grad():
        assert ContentEncoder(in_channels=6)(torch.cat([x, x], 1))[-1].shape == (2, 512, 6, 6)


def test_audio_encoder_shapes_and_variants():
    mel = torch.randn(3, 20, 80)
    e_a = ResNetSE34L(norm="instance", act="lrelu")
    s_a = ResNetSE34L()
    assert e_a(mel).shape == (3, 512) and s_a(mel).shape == (3, 512)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in e_a.modules())
    assert any(isinstance(m, torch.nn.InstanceNorm2d) and m.affine for m in e_a.modules())
    assert [len(s) for s in e_a.stages] == [3, 4, 6, 3]
    with pytest.raises(ValueError, match="mel"):
        e_a(torch.randn(3, 80, 20))


# ---- StyleGAN2 pieces --------------------------------------------------------------------------
def test_modulated_conv_matches_per_sample_weights():
    for up in (False, True):
        conv = ModulatedConv2d(8, 5, 3, w_dim=16, upsample=up)
        x, w = torch.randn(2, 8, 6, 6), torch.randn(2, 16)
        out = conv(x, w)
        assert out.shape == ((2, 5, 12, 12) if up else (2, 5, 6, 6))
        style = conv.modulation(w)
        for i in range(2):                   # reference: StyleGAN2's explicit modulated weight
            wt = conv.weight * conv.scale * style[i].view(1, -1, 1, 1)
            wt = wt * torch.rsqrt(wt.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
            if up:
                ref = conv.blur(F.conv_transpose2d(x[i:i + 1], wt.transpose(0, 1), stride=2))
            else:
                ref = F.conv2d(x[i:i + 1], wt, padding=1)
            torch.testing.assert_close(out[i:i + 1], ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(ModulatedConv2d(8, 5, 3, w_dim=16).modulation.bias, torch.ones(8))


def test_fir_upsample_keeps_constants():
    up = Upsample()
    y = up(torch.ones(1, 2, 6, 6))
    assert y.shape == (1, 2, 12, 12)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.ones(1, 2, 8, 8))


# ---- ViT ----------------------------------------------------------------------------------------
def test_vit_patch_grids_at_192():
    g = Generator(ModelConfig())
    assert sorted(g.vit) == ["5", "6"]
    assert (g.vit["5"].size, g.vit["5"].patch, g.vit["5"].grid) == (96, 3, (16, 32))
    assert (g.vit["6"].size, g.vit["6"].patch, g.vit["6"].grid) == (192, 6, (16, 32))
    assert all(b.num_tokens == 512 and len(b.layers) == 2 for b in g.vit.values())
    attn = g.vit["6"].layers[0][0]
    assert isinstance(attn, Attention) and attn.heads == 8 and attn.to_q.out_features == 256
    assert g.vit["6"].layers[0][1].net[1].out_features == 1024          # MLP ratio 4
    x, s = torch.randn(1, 64, 192, 192), torch.randn(1, 64, 192, 192)
    with torch.no_grad():
        out, maps = g.vit["6"](x, s, return_attention=True)
    assert out.shape == x.shape and [m.shape for m in maps] == [(1, 8, 512, 512)] * 2
    g96 = Generator(ModelConfig(resolution=R))
    assert [(b.patch, b.num_tokens) for b in g96.vit.values()] == [(3, 128), (6, 128)]


def test_vit_block_reads_only_lower_halves():
    blk = ViTBlock(channels=16, context_channels=8, size=24, patch=3, dim=32, depth=2, heads=4, dim_head=8)
    x, ctx = torch.randn(2, 16, 24, 24), torch.randn(2, 8, 24, 24)
    out = blk(x, ctx)
    ctx_up = ctx.clone()
    ctx_up[:, :, :12] = torch.randn(2, 8, 12, 24)
    ctx_low = ctx.clone()
    ctx_low[:, :, 12:13, :3] += 1.0                                        # one lower patch
    torch.testing.assert_close(blk(x, ctx_up), out, rtol=0, atol=0)
    assert (blk(x, ctx_low) - out).abs().amax() > 1e-4
    assert torch.equal(out[:, :, :12], x[:, :, :12])                       # upper half passes through
    assert (out[:, :, 12:] - x[:, :, 12:]).abs().amax() > 1e-4


@pytest.mark.parametrize("ablation", ["C", "D"])
def test_generator_ignores_upper_half_of_style_features(ablation):
    cfg = ModelConfig(**SMALL, ablation=ablation, vit=ViTConfig(dim=64))
    model = RADIO(cfg).eval()
    x, ref, mel = _inputs(1)
    with torch.no_grad():
        content, w, style = model.encode(x, ref, mel)
        out = model.generator(content, w, style)

        def edit(rows):
            new = [f.clone() for f in style]
            for f in new:                    # every f_s^i, including the ones fidelity reads (1, 2)
                h = f.shape[2]
                sl = slice(0, h // 2) if rows == "upper" else slice(h // 2, h)
                f[:, :, sl] = torch.randn_like(f[:, :, sl]) * 3
            return new

        torch.testing.assert_close(model.generator(content, w, edit("upper")), out, rtol=0, atol=0)
        assert (model.generator(content, w, edit("lower")) - out).abs().amax() > 1e-3


def test_output_ignores_target_lower_half():
    model = RADIO(ModelConfig(**SMALL)).eval()
    x, ref, mel = _inputs(1)
    x2 = x.clone()
    x2[..., 48:, :] = torch.rand_like(x2[..., 48:, :])
    x3 = x.clone()
    x3[..., :8, :] = -1.0
    with torch.no_grad():
        out = model(x, ref, mel)
        torch.testing.assert_close(model(x2, ref, mel), out, rtol=0, atol=0)
        torch.testing.assert_close(model(mask_lower_half(x), ref, mel), out, rtol=0, atol=0)
        assert (model(x3, ref, mel) - out).abs().amax() > 1e-4             # the upper half is read


# ---- the whole generator --------------------------------------------------------------------------
def test_gradients_reach_every_generator_parameter():
    model = RADIO(ModelConfig(resolution=R)).train()
    x, ref, mel = _inputs(2)
    out = model(x, ref, mel, noise=model.generator.make_noise(2))
    assert out.shape == (2, 3, R, R)
    (out - x).abs().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not missing, missing
    assert not zero, zero


def test_noise_is_injectable_and_off_in_eval():
    model = RADIO(ModelConfig(**SMALL))
    for conv in model.generator.convs:
        conv.noise.weight.data.fill_(0.5)
    x, ref, mel = _inputs(1)
    with torch.no_grad():
        model.eval()
        a, b = model(x, ref, mel), model(x, ref, mel)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        n1 = model.generator.make_noise(1)
        torch.testing.assert_close(model(x, ref, mel, noise=n1), model(x, ref, mel, noise=n1))
        assert (model(x, ref, mel, noise=n1) - a).abs().amax() > 1e-4
        model.train()
        assert (model(x, ref, mel) - model(x, ref, mel)).abs().amax() > 1e-4   # fresh noise per call


@pytest.mark.parametrize("ablation,n,m", [("A", 2, 2), ("B", 2, 2), ("C", 2, 2), ("D", 1, 1), ("D", 1, 2),
                                          ("D", 2, 2), ("D", 3, 3)])
def test_ablations_and_vit_variants_run(ablation, n, m):
    cfg = ModelConfig(**SMALL, ablation=ablation, vit=ViTConfig(n=n, m=m, dim=64))
    model = RADIO(cfg).eval()
    assert (model.style_encoder is None) == (ablation == "A")
    assert model.content_encoder.layers[0][0].weight.shape[1] == (6 if ablation == "A" else 3)
    assert model.generator.convs[0].conv.modulation.weight.shape[1] == cfg.w_dim
    vit = model.generator.vit
    assert sorted(vit) == ([str(k) for k in range(7 - n, 7)] if ablation == "D" else [])
    assert all(len(b.layers) == m for b in vit.values())
    x, ref, mel = _inputs(1, t=2)                                    # T frames fold into the batch
    with torch.no_grad():
        out = model(x, ref, mel)
    assert out.shape == (1, 2, 3, R, R) and torch.isfinite(out).all()


# ---- discriminators ---------------------------------------------------------------------------------
def test_discriminator_shapes():
    d = Discriminator(ModelConfig(resolution=R))
    assert len(d.blocks) == 4
    assert d(torch.rand(6, 3, R, R) * 2 - 1).shape == (6, 1)                 # group shrinks to 3
    assert minibatch_stddev(torch.randn(8, 4, 3, 3)).shape == (8, 5, 3, 3)
    d192 = Discriminator(ModelConfig())
    assert len(d192.blocks) == 5 and d192.final_linear[0].weight.shape[1] == 512 * 6 * 6
    with torch.no_grad():
        assert d192(torch.zeros(2, 3, 192, 192)).shape == (2, 1)


def test_sync_input_crop_and_probability():
    frames = torch.rand(2, 5, 3, 192, 192) * 2 - 1
    g = to_sync_input(frames)
    assert g.shape == (2, 5, 144, 144)
    ref = 0.299 * frames[:, :, 0] + 0.587 * frames[:, :, 1] + 0.114 * frames[:, :, 2]
    torch.testing.assert_close(g, ref[..., 48:192, 24:168])
    assert to_sync_input(frames[..., ::2, ::2]).shape == (2, 5, 144, 144)   # 96 frames: 72 box, resized

    s = SyncNet().eval()
    with torch.no_grad():
        v, a = s.embed(g, torch.randn(2, 20, 80))
        p = s(g, torch.randn(2, 20, 80))
    assert v.shape == a.shape == (2, 512) and (v >= 0).all() and (a >= 0).all()
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()
    pp, y = torch.tensor([0.0, 1.0, 0.3]), torch.tensor([1.0, 0.0, 1.0])
    loss = sync_bce(pp, y)
    torch.testing.assert_close(loss, F.binary_cross_entropy(pp.clamp(1e-7, 1 - 1e-7), y))
    assert torch.isfinite(loss)


def test_model_summary_lists_every_module():
    text = model_summary(ModelConfig(resolution=R))
    for name in ("E_c", "E_s", "E_a", "G", "ViT", "D", "S_v", "S_a"):
        assert f"\n{name} " in text


def test_model_config_from_training_yaml_and_overrides(tmp_path):
    from radio.model.summary import load_model_config

    path = tmp_path / "train.yaml"
    path.write_text("model:\n  resolution: 96\n  ablation: C\n  vit:\n    n: 1\n")
    cfg = load_model_config(str(path), ["model.vit.m=1", "noise=false"])
    assert (cfg.resolution, cfg.ablation, cfg.vit.n, cfg.vit.m, cfg.noise) == (96, "C", 1, 1, False)
    assert cfg.fidelity_layers == (6,)
