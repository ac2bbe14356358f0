"""Prefix-length specs of the extrapolation sweep: an int (tokens), ``"half"`` or a fraction ``"a/b"``.

Shared by the sweep, its plots and the report, so none of them imports another.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Union

PrefixSpec = Union[int, str]


def parse_prefix(spec: PrefixSpec) -> PrefixSpec:
    """Validate one prefix spec: a positive int, ``"half"`` or a fraction ``"a/b"`` in (0, 1)."""
    if isinstance(spec, bool):
        raise ValueError(f"prefix length must be an integer or a fraction like 'half' / '1/4', got {spec!r}")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"prefix length must be >= 1, got {spec}")
        return spec
    text = str(spec).strip()
    if text.isdigit():
        return parse_prefix(int(text))
    try:
        frac = Fraction(1, 2) if text == "half" else Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"prefix length must be an integer or a fraction like 'half' / '1/4', got {spec!r}") from None
    if not 0 < frac < 1:
        raise ValueError(f"a fractional prefix length must lie in (0, 1), got {spec!r}")
    return "half" if frac == Fraction(1, 2) else f"{frac.numerator}/{frac.denominator}"


def resolve_prefix(spec: PrefixSpec, length: int) -> int:
    """Prefix tokens for a sequence of ``length`` tokens."""
    spec = parse_prefix(spec)
    if isinstance(spec, int):
        return spec
    frac = Fraction(1, 2) if spec == "half" else Fraction(spec)
    return max(1, int(length * frac))


def prefix_label(spec: PrefixSpec) -> str:
    spec = parse_prefix(spec)
    return f"p{spec}" if isinstance(spec, int) else ("p-half" if spec == "half" else "p-" + spec.replace("/", "of"))
