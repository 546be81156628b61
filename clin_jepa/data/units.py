"""Unit conversion into a concept's canonical unit, by the UCUM grammar of ``ucumvert`` on ``pint``.

Every conversion the loader applies is affine (``canonical = scale * value + offset``): it is derived
once per (unit, canonical unit, molar mass) from the units library and then applied to whole shards with
numpy. Unit strings are read as UCUM (``mm[Hg]``, ``Cel``, ``[degF]``, ``10*3/uL``, ``10^9/L``, ``/uL``)
after two rewrites the library does not do itself: the concept's own ``aliases`` from the catalog, then
a few spellings common in EHR extracts that are not UCUM (``K/uL``, ``mmHg``, ``degF``, ``°C`` ...).
UCUM annotations (``{score}``) are the unit 1, as the UCUM specification defines them.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from clin_jepa.errors import ConfigError

# Not UCUM, but what extracts and people write; the value is the UCUM spelling.
COMMON_SPELLINGS = {
    "K/uL": "10*3/uL", "k/uL": "10*3/uL", "K/mcL": "10*3/uL", "mcL": "uL",
    "10^3/uL": "10*3/uL", "x10E3/uL": "10*3/uL",
    "G/L": "10*9/L", "10^9/L": "10*9/L", "x10E9/L": "10*9/L", "/mm3": "/mm3",
    "mmHg": "mm[Hg]", "degC": "Cel", "°C": "Cel", "C": "Cel", "degF": "[degF]", "°F": "[degF]", "F": "[degF]",
    "µmol/L": "umol/L", "μmol/L": "umol/L", "µL": "uL", "fraction": "1", "[pH]": "1", "bpm": "/min",
    "mEq/L": "meq/L",
}
_ANNOTATION = re.compile(r"\{[^{}]*\}")


@cache
def _registry() -> Any:
    """The UCUM-aware pint registry (built once per process: about 3 s)."""
    from ucumvert import PintUcumRegistry  # a heavy import, deferred until a unit is converted

    return PintUcumRegistry()


def ucum(unit: str, aliases: tuple[tuple[str, str], ...] = ()) -> str:
    """``unit`` rewritten to the UCUM the library parses (concept aliases first, then common spellings)."""
    unit = dict(aliases).get(unit.strip(), unit.strip())
    unit = COMMON_SPELLINGS.get(unit, unit)
    unit = _ANNOTATION.sub("1", unit)
    return unit or "1"


def _quantity(unit: str) -> tuple[float, Any]:
    """``(magnitude, pint units)`` of a UCUM unit string (``10*3/uL`` has magnitude 1000)."""
    reg = _registry()
    try:
        parsed = reg.from_ucum(unit)
    except Exception as exc:  # noqa: BLE001 - the UCUM parser raises lark/pint errors of many kinds
        raise ConfigError(f"unit {unit!r} is not a unit the UCUM units library knows "
                          f"({type(exc).__name__})") from None
    if not hasattr(parsed, "units"):
        raise ConfigError(f"unit {unit!r} is not a unit the UCUM units library knows")
    return float(parsed.magnitude), parsed.units


@cache
def affine(unit: str, canonical: str, molar_mass: float | None = None,
           aliases: tuple[tuple[str, str], ...] = ()) -> tuple[float, float]:
    """``(scale, offset)`` such that ``canonical value = scale * value + offset``.

    A mass concentration converts to a substance concentration (or back) through ``molar_mass`` (g/mol);
    anything else the library cannot convert raises :class:`ConfigError` naming both units.
    """
    reg = _registry()
    (src_mag, src), (dst_mag, dst) = _quantity(ucum(unit, aliases)), _quantity(ucum(canonical, aliases))
    target = reg.Quantity(1.0, dst).dimensionality

    def at(x: float) -> float:
        q = reg.Quantity(x * src_mag, src)
        if q.dimensionality != target and molar_mass:
            mm = reg.Quantity(molar_mass, "g/mol")
            q = next((x for x in (q / mm, q * mm) if x.dimensionality == target), q)
        return float(q.to(dst).magnitude / dst_mag)

    try:
        offset = at(0.0)
        return at(1.0) - offset, offset
    except Exception as exc:  # noqa: BLE001 - pint's DimensionalityError and friends
        hint = "" if molar_mass else " (a mass <-> substance conversion needs the concept's molar_mass)"
        raise ConfigError(f"unit {unit!r} cannot be converted to {canonical!r}: "
                          f"{' '.join(str(exc).split())}{hint}") from None
