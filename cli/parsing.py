"""Option values written as text: byte sizes and height x width."""

from __future__ import annotations

import re

from raycseg.errors import DataError

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "g": 1 << 30, "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40}  # fmt: skip


def parse_size(text: str) -> int:
    """Parse a byte size such as 500MB, 1GB or 1048576."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise DataError(f"cannot read size {text!r}; write it like 500MB, 1GB or 1048576")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_height_width(text: str) -> tuple[int, int]:
    """Parse HEIGHTxWIDTH such as 512x1024."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or 0 in (int(match.group(1)), int(match.group(2))):
        raise DataError(f"cannot read size {text!r}; write height x width like 512x1024")
    return int(match.group(1)), int(match.group(2))
