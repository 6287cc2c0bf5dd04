"""Dtype names accepted on command lines and in recipes."""

from __future__ import annotations

import torch

from .errors import DataError

DTYPES = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """``"auto"`` (the checkpoint's dtype), a torch dtype, or one of float32/bfloat16/float16 (fp32/bf16/fp16).

    None means ``"auto"``; an unknown name raises `DataError`.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    if dtype not in DTYPES:
        raise DataError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


__all__ = ["DTYPES", "parse_dtype"]
