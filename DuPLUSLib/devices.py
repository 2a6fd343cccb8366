"""Choosing where and in what precision the network runs."""

from __future__ import annotations

from functools import lru_cache

import torch

from .errors import DeviceError

__all__ = ["select_device", "autocast_dtype"]


def select_device(name: str = "auto") -> torch.device:
    """``auto`` takes a CUDA GPU, else Apple's MPS, else the CPU; an unavailable choice is an error."""
    name = (name or "auto").lower()
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name in ("cuda", "gpu") or name.startswith("cuda:"):
        if not cuda:
            raise DeviceError(
                "a CUDA GPU was asked for, but this PyTorch sees none "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "choose the CPU (--device cpu) or install a CUDA build of PyTorch"
            )
        return torch.device("cuda" if name == "gpu" else name)
    if name == "mps":
        if not mps:
            raise DeviceError("Apple MPS was asked for but is not available; choose --device cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device '{name}'; choose auto, cpu, cuda or mps")


@lru_cache(maxsize=1)
def _cpu_has_fast_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference, or None for plain float32.

    ``auto`` takes bfloat16 where the hardware computes it natively (AMX or AVX512-BF16 CPUs, recent
    GPUs): there it is two to four times faster, and the sigmoid probabilities move by far less than
    the threshold margin (checked by the test suite against float32).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not '{precision}'")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return torch.bfloat16
    return None

