"""bench's per-encoder forward speed: every offline encoder, at its native size and precision."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import core.measure.bench as bench


@pytest.mark.slow
def test_every_offline_encoder_is_timed_at_its_native_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int] = []

    def one_pass(forward: Callable[[torch.Tensor], object], size: int, batch: int = 32) -> float:
        with torch.inference_mode():
            out = forward(torch.randn(2, 3, size, size))
        assert getattr(out, "shape", (0, 0))[1] == 1280
        sizes.append(size)
        return 10.0 * len(sizes)

    monkeypatch.setattr(bench, "images_per_s", one_pass)
    figures = bench.bench_encoders("fp32")
    assert sizes == [224, 240, 260]  # lite0, lite1, lite2; no download, no test-only encoder
    assert figures == {
        "forward_efficientnet-lite0_precision": "fp32",
        "forward_efficientnet-lite0_images_per_s": 10.0,
        "forward_efficientnet-lite1_precision": "fp32",
        "forward_efficientnet-lite1_images_per_s": 20.0,
        "forward_efficientnet-lite2_precision": "fp32",
        "forward_efficientnet-lite2_images_per_s": 30.0,
    }
