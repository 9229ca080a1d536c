"""Checks of user-given values, in plain Python (no torch): each raises an InputError that
names what was wrong and what is valid."""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from core.paths import InputError


NAME_MAX = 100
TAG_MAX = 32


def clean_name(name: str | None) -> str | None:
    """A run's name trimmed (None when blank); refuses one over ``NAME_MAX`` characters or
    with a line break, which would break every table it is listed in."""
    name = (name or "").strip() or None
    if name is not None and (len(name) > NAME_MAX or any(c in name for c in "\n\r\t")):
        raise InputError(f"invalid run name {name[:40]!r}{'…' if len(name) > 40 else ''} "
                         f"({len(name):,} characters): at most {NAME_MAX} characters, on one "
                         "line")
    return name


def clean_tag(tag: str) -> str:
    """A tag trimmed and lower-cased; refuses one over ``TAG_MAX`` characters or holding a
    space, comma, tab or line break (tags are listed comma-separated and typed as words)."""
    tag = str(tag).strip().lower()
    if len(tag) > TAG_MAX or any(c in tag for c in ", \n\t"):
        raise InputError(f"invalid tag {tag[:40]!r}: one word of at most {TAG_MAX} characters, "
                         "without spaces, commas, tabs or line breaks (use - or _ to join words)")
    return tag


def a_kind(kind: str) -> str:
    """'an audit run', 'a train run': a run's kind with its article, for messages."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} run"


def check_range(name: str, value: Any, low: float, high: float) -> None:
    """Raise InputError unless ``value`` is a finite number in [low, high]."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or not low <= value <= high):
        raise InputError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def check_positive(name: str, value: Any) -> None:
    """Raise InputError unless ``value`` is a whole number > 0."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{name} must be a positive whole number, got {value!r}")


def check_choice(name: str, value: Any, valid: tuple) -> None:
    """Raise InputError unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise InputError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def build_registered(kind: str, registry: dict, name: str, params: dict):
    """Instantiate ``registry[name]`` (a dataclass) with ``params``, naming the valid names or
    fields when either is wrong."""
    if name not in registry:
        raise InputError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(registry)}")
    valid = [f.name for f in fields(registry[name])]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown} for {kind} {name!r}; valid: "
                         f"{', '.join(valid)}")
    return registry[name](**params)


def parse_numbers(text: str) -> list[float]:
    """Numbers typed as '0, 0.1, 8/255' (comma-separated; a fraction is divided out); one
    clear InputError for an empty item or one that is not a number."""
    items = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not v for v in items):
        raise InputError(f"expected comma-separated numbers like 0, 0.05, 0.1 or 8/255 with no "
                         f"empty item, got {text!r}")
    values = []
    for item in items:
        top, _, bottom = item.partition("/")
        try:
            values.append(float(top) / float(bottom) if bottom else float(top))
        except (ValueError, ZeroDivisionError):
            raise InputError(f"{item!r} is not a number; type numbers separated by commas, e.g. "
                             "0, 0.05, 0.1 or 8/255") from None
    return values
