"""Precision rules shared by the loss modules: losses compute in float32 or wider.

Methods may run their models under bf16/fp16 autocast; similarities divided by
small temperatures (0.07) need float32, so every public loss runs with autocast
off (:func:`full_precision`) and promotes its inputs (:func:`at_least_float32`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

_P = ParamSpec("_P")
_R = TypeVar("_R")


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` as float32 if it is narrower (bf16/fp16/ints), else unchanged (float64 stays)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def full_precision(loss_fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate a loss so that it runs with autocast disabled on every device where it is on."""

    @functools.wraps(loss_fn)
    def without_autocast(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with contextlib.ExitStack() as stack:
            for device_type in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return loss_fn(*args, **kwargs)

    return without_autocast
