"""The canonical concept vocabulary (``concepts.yaml``) and unit conversion into it.

Invariants: the vocabulary order is the file order (measurements first, then treatments) and never
depends on a site; every accepted unit converts affinely (``canonical = scale * value + offset``) so a
conversion is invertible and exact round trips hold up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import numpy as np
import yaml


@dataclass(frozen=True)
class Concept:
    """One canonical concept. Treatments have no unit, range or conversions."""

    name: str
    kind: str  # "measurement" | "treatment"
    unit: str | None = None
    lo: float = 0.0
    hi: float = 1.0
    units: tuple[tuple[str, float, float], ...] = ()  # (unit, scale, offset)
    nonnegative: bool = False

    def conversion(self, unit: str) -> tuple[float, float]:
        """``(scale, offset)`` taking ``unit`` to the canonical unit; KeyError if not accepted."""
        for name, scale, offset in self.units:
            if name == unit:
                return scale, offset
        raise KeyError(unit)

    @property
    def unit_names(self) -> tuple[str, ...]:
        return tuple(u for u, _, _ in self.units)


@dataclass(frozen=True)
class ConceptTable:
    """All canonical concepts; ``index`` gives each name's position in the canonical order."""

    measurements: tuple[Concept, ...]
    treatments: tuple[Concept, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.measurements + self.treatments)

    @property
    def measurement_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.measurements)

    @property
    def treatment_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.treatments)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def get(self, name: str) -> Concept:
        for c in self.measurements + self.treatments:
            if c.name == name:
                return c
        raise KeyError(name)


def _parse_units(raw: dict[str, object]) -> tuple[tuple[str, float, float], ...]:
    out = []
    for unit, conv in raw.items():
        scale, offset = (conv, 0.0) if isinstance(conv, int | float) else conv  # type: ignore[misc]
        out.append((str(unit), float(scale), float(offset)))
    return tuple(out)


@cache
def load_concepts() -> ConceptTable:
    """The packaged vocabulary (read once per process)."""
    raw = yaml.safe_load(files("clin_jepa.data").joinpath("concepts.yaml").read_text())
    measurements = tuple(
        Concept(name, "measurement", spec["unit"], float(spec["range"][0]), float(spec["range"][1]),
                _parse_units(spec["units"]), bool(spec.get("nonnegative", False)))
        for name, spec in raw["measurements"].items()
    )
    treatments = tuple(Concept(name, "treatment") for name in raw["treatments"])
    return ConceptTable(measurements, treatments)


def to_canonical(values: np.ndarray, concept: str, unit: str) -> np.ndarray:
    """Convert ``values`` recorded in ``unit`` to ``concept``'s canonical unit (float64)."""
    scale, offset = load_concepts().get(concept).conversion(unit)
    return np.asarray(values, dtype=np.float64) * scale + offset


def from_canonical(values: np.ndarray, concept: str, unit: str) -> np.ndarray:
    """Inverse of :func:`to_canonical` (used by the synthetic generator and round-trip tests)."""
    scale, offset = load_concepts().get(concept).conversion(unit)
    return (np.asarray(values, dtype=np.float64) - offset) / scale
