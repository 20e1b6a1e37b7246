"""Which arithmetic the image tower runs in: fp32 everywhere, bf16 where the CPU has it natively.

`LOOKALIKE_PRECISION` (or `Settings.precision`) is `auto`, `fp32` or `bf16`. `auto` picks bf16
when the CPU computes it natively (AVX512-BF16 or AMX, read from /proc/cpuinfo at run time,
never assumed) and the encoder's bf16 vectors were checked to rank like its fp32 ones (the
registry's `bf16_checked`: whole-gallery `evaluate` mAP@10 and MRR@10 within 0.5 % on the demo
gallery, measured with the real weights); otherwise fp32. A CPU without native bf16 would
emulate it, slower than fp32, so asking for bf16 there is refused.

The precision a version's vectors were computed in is recorded on its card when the version is
created, and its queries are always encoded the same way (`core.studio.Studio.encoder`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from core.choices import PRECISIONS
from core.encoder.registry import EncoderError, EncoderSpec

PRECISION_ENV = "LOOKALIKE_PRECISION"
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    return bool((cpu_flags() if flags is None else flags) & _NATIVE_BF16_FLAGS)


def resolve_precision(
    requested: str, spec: EncoderSpec, flags: frozenset[str] | None = None
) -> str:
    """`auto` / `fp32` / `bf16` -> the precision to use for `spec` on this CPU."""
    if requested not in ("auto", *PRECISIONS):
        raise EncoderError(
            f"Unknown precision {requested!r}; use auto or one of {', '.join(PRECISIONS)}."
        )
    native = native_bf16(flags)
    if requested == "auto":
        return "bf16" if native and spec.bf16_checked else "fp32"
    if requested == "bf16" and not native:
        raise EncoderError(
            "bf16 was asked for, but this CPU has neither AVX512-BF16 nor AMX: it would be "
            "emulated, slower than fp32. Use LOOKALIKE_PRECISION=auto or fp32."
        )
    return requested
