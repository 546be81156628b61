"""Errors a user can act on.

Every failure caused by input (a config value, a dataset, a checkpoint, a missing file) is raised as a
subclass of :class:`ClinJepaError`. The CLI and the Flower apps catch exactly this type and print its
message as one paragraph with a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any


class ClinJepaError(Exception):
    """Base class: the message is written for the person who has to fix the input."""


class ConfigError(ClinJepaError):
    """A config file or value is invalid; the message names the key path and the allowed values."""


class DataValidationError(ClinJepaError):
    """A dataset broke the data contract; ``problems`` holds every problem found, not only the first."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{source}: {len(self.problems)} problem(s) found:\n{shown}{more}")


class CheckpointError(ClinJepaError):
    """A checkpoint is missing, corrupt, tampered with, unsigned, or does not match the data."""


class PrivacyBudgetExceeded(ClinJepaError):
    """A site's next round would spend more privacy budget than its config allows."""


_KINDS: dict[str, type] = {"int": numbers.Integral, "float": numbers.Real, "bool": bool, "str": str}


def as_kind(value: Any, kinds: type | tuple[type, ...]) -> Any:
    """``value`` as a config means it, or TypeError: an int where a float is asked becomes that float, and
    a bool is never a number (``true`` for a count of hours is a mistake, not 1). Callers name the key."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:
        raise TypeError(f"a bool where {kinds} expected")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kinds):
        raise TypeError(f"{type(value).__name__} where {kinds} expected")
    return value


def check_field_types(config: Any, section: str) -> None:
    """Refuse a config dataclass whose int/float/bool/str fields hold another kind of value.

    A ``--set`` or YAML value of the wrong kind (``loss.context_mask=abc``, a fractional hour count) would
    otherwise surface as a TypeError from the first comparison, or from torch in the middle of training;
    here it names the key. numpy scalars count as numbers; bools are not numbers here.
    """
    for f in dataclasses.fields(config):
        name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        kind, value = _KINDS.get(name), getattr(config, f.name)
        if kind is None:
            continue
        try:
            as_kind(value, kind)
        except TypeError:
            raise ConfigError(f"{section}.{f.name}: {name} expected, got {value!r}") from None
