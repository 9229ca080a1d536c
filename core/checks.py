"""Checks of user-given values, in plain Python (no torch): each raises an InputError that
names what was wrong and what is valid."""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from core.paths import InputError


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
