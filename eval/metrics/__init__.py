"""Evaluation metrics, functional core (torchmetrics-style ``_update``/``_compute`` pairs).

Per-clip functions take arrays — frames (N, H, W, 3) uint8 RGB, landmarks (T, 68, 2), audio
(L,) 16 kHz — so that the pipelines wire media I/O and landmark backends around them. Each
module's ``METADATA`` says which way is good and what a score row must record.

| metric  | module                  | clip score                        | higher is better |
|---------|-------------------------|-----------------------------------|------------------|
| PSNR    | :mod:`.psnr`            | mean per-frame dB, capped at 100  | yes              |
| MS-SSIM | :mod:`.msssim`          | mean per-frame, 256 crops         | yes              |
| LPIPS   | :mod:`.lpips`           | mean per-frame, v0.1 AlexNet      | no               |
| LMD     | :mod:`.lmd`             | mean mouth-point px at 256        | no               |
| Sync-C  | :mod:`.sync`            | median − min mean distance        | yes              |
| Sync-D  | :mod:`.sync`            | min mean distance                 | no               |

The crops come from :mod:`eval.crop` (protocols ``radio-v1`` and ``dinet``). Import from the
modules (``from eval.metrics.psnr import psnr``): nothing is re-exported here, so that a
function never shadows its module of the same name.
"""
