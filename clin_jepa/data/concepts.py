"""The concept catalog: the canonical vocabulary (``concepts.yaml`` or a federation's own file).

Invariants: the vocabulary order is the file order, measurements first then treatments, and never depends
on a site; every accepted unit converts affinely (``canonical = scale * value + offset``, derived by the
units library in :mod:`clin_jepa.data.units`) so a conversion is invertible and round trips hold up to
float rounding. A catalog's :meth:`ConceptTable.fingerprint` is part of every discretization computed
under it, so data tokenized under one catalog is never read by a model built under another.

One catalog is *in use* per process (:func:`use_catalog`; the packaged one unless a run names another):
the statistics round, the tokenizer and validation all read it through :func:`load_concepts`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from clin_jepa.data.units import affine
from clin_jepa.errors import ClinJepaError, ConfigError
from clin_jepa.yamlfile import load_yaml_file

KINDS = ("measurement", "treatment")
_CONCEPT_KEYS = ("name", "kind", "unit", "range", "nonnegative", "molar_mass", "aliases")


@dataclass(frozen=True)
class Concept:
    """One canonical concept. Treatments have no unit, range or conversions."""

    name: str
    kind: str  # "measurement" | "treatment"
    unit: str | None = None
    lo: float = 0.0
    hi: float = 1.0
    nonnegative: bool = False
    molar_mass: float | None = None  # g/mol: mass <-> substance concentrations
    aliases: tuple[tuple[str, str], ...] = ()  # site spelling -> a unit the library knows

    def conversion(self, unit: str) -> tuple[float, float]:
        """``(scale, offset)`` taking ``unit`` to the canonical unit; ConfigError if it cannot."""
        if self.unit is None:
            raise ConfigError(f"concept {self.name!r} is a treatment and takes no unit")
        return affine(unit, self.unit, self.molar_mass, self.aliases)


@dataclass(frozen=True)
class ConceptTable:
    """All canonical concepts; ``index`` gives each name's position in the canonical order."""

    measurements: tuple[Concept, ...]
    treatments: tuple[Concept, ...]
    name: str = "clin-jepa-default"
    source: str = "packaged"

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

    def fingerprint(self) -> str:
        """sha256 of everything that changes what a value means (names, kinds, units, ranges, conversions);
        the catalog's name and file path are left out so a renamed copy is the same catalog."""
        body = [asdict(c) for c in self.measurements + self.treatments]
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def describe(self) -> str:
        return (f"concept catalog {self.name!r} ({self.source}; {len(self.measurements)} measurements, "
                f"{len(self.treatments)} treatments; fingerprint {self.fingerprint()[:12]})")


def _concept(raw: Any, i: int, where: str) -> Concept:
    key = f"{where}: concepts[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping with name, kind, unit, range")
    unknown = sorted(set(raw) - set(_CONCEPT_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed: {list(_CONCEPT_KEYS)}")
    name, kind = raw.get("name"), raw.get("kind")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise ConfigError(f"{key}.name: {name!r} must be lower-case letters, digits and _")
    if kind not in KINDS:
        raise ConfigError(f"{key}.kind ({name}): {kind!r} is not one of {list(KINDS)}")
    if kind == "treatment":
        extra = sorted(set(raw) - {"name", "kind"})
        if extra:
            raise ConfigError(f"{key} ({name}): a treatment has no value; remove {extra}")
        return Concept(name, kind)
    unit, rng = raw.get("unit"), raw.get("range")
    if not isinstance(unit, str) or not unit:
        raise ConfigError(f"{key}.unit ({name}): a measurement needs its canonical unit")
    if (not isinstance(rng, list) or len(rng) != 2 or not all(isinstance(x, int | float) for x in rng)
            or not rng[0] < rng[1]):
        raise ConfigError(f"{key}.range ({name}): expected [lo, hi] with lo < hi, got {rng!r}")
    mm = raw.get("molar_mass")
    if mm is not None and (not isinstance(mm, int | float) or not mm > 0):
        raise ConfigError(f"{key}.molar_mass ({name}): expected a number of g/mol > 0, got {mm!r}")
    aliases = raw.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in aliases.items()):
        raise ConfigError(f"{key}.aliases ({name}): expected a mapping of unit spellings to units")
    concept = Concept(name, kind, unit, float(rng[0]), float(rng[1]), bool(raw.get("nonnegative", False)),
                      None if mm is None else float(mm), tuple(sorted(aliases.items())))
    try:
        concept.conversion(unit)
    except ConfigError as exc:
        raise ConfigError(f"{key}.unit ({name}): {exc}") from None
    return concept


def parse_catalog(raw: Any, source: str) -> ConceptTable:
    """A :class:`ConceptTable` from parsed catalog YAML; ConfigError naming the entry for anything wrong."""
    if not isinstance(raw, dict) or not isinstance(raw.get("concepts"), list):
        raise ConfigError(f"{source}: a concept catalog is a mapping with 'name' and a 'concepts' list")
    unknown = sorted(set(raw) - {"name", "concepts"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: ['concepts', 'name']")
    concepts = [_concept(c, i, source) for i, c in enumerate(raw["concepts"])]
    names = [c.name for c in concepts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{source}: concept name(s) {dup} given more than once")
    measurements = tuple(c for c in concepts if c.kind == "measurement")
    treatments = tuple(c for c in concepts if c.kind == "treatment")
    if not measurements:
        raise ConfigError(f"{source}: the catalog needs at least one measurement concept")
    return ConceptTable(measurements, treatments, str(raw.get("name", Path(source).stem)), source)


@cache
def packaged_catalog() -> ConceptTable:
    """The catalog shipped with the package (``clin_jepa/data/concepts.yaml``)."""
    return parse_catalog(yaml.safe_load(files("clin_jepa.data").joinpath("concepts.yaml").read_text()),
                         "packaged")


def read_catalog(path: str | Path | None) -> ConceptTable:
    """The catalog in ``path``; the packaged one for None or ""."""
    if not path:
        return packaged_catalog()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: concept catalog file not found")
    return parse_catalog(load_yaml_file(p, "concept catalog"), str(p))


_IN_USE: list[ConceptTable] = []


def load_concepts() -> ConceptTable:
    """The catalog in use in this process (the packaged one unless :func:`use_catalog` chose another)."""
    return _IN_USE[-1] if _IN_USE else packaged_catalog()


def use_catalog(path: str | Path | None) -> ConceptTable:
    """Make the catalog in ``path`` (None/"" = packaged) the one this process uses, and return it."""
    table = read_catalog(path)
    _IN_USE[:] = [table]
    return table


@contextmanager
def restored_catalog() -> Iterator[None]:
    """Whatever catalog the block chooses, the previous one is in use again after it."""
    saved = list(_IN_USE)
    try:
        yield
    finally:
        _IN_USE[:] = saved


@contextmanager
def catalog_in_use(path: str | Path | None) -> Iterator[ConceptTable]:
    """Use the catalog in ``path`` inside the block, then restore the previous one."""
    with restored_catalog():
        yield use_catalog(path)


def check_catalog(fingerprint: str, what: str) -> None:
    """Refuse ``what`` (a discretization, checkpoint or site) built under another catalog than the one in
    use. An empty fingerprint is from a version before catalogs and is accepted."""
    table = load_concepts()
    if fingerprint and fingerprint != table.fingerprint():
        raise ClinJepaError(
            f"{what} was built under concept catalog {fingerprint[:12]}, but this run uses "
            f"{table.describe()}. Every site and checkpoint of a federation must use the catalog the "
            f"federation agreed on: pass the same file (run config concept-catalog, --concepts, or the "
            f"site config's concept_catalog)")


def check_site_catalog(site: str, path: Path | None) -> None:
    """Refuse a site whose config names a catalog (``concept_catalog``) other than the one in use."""
    if path is None:
        return
    agreed = read_catalog(path)
    if agreed.fingerprint() != load_concepts().fingerprint():
        # a ConfigError: it names catalogs, not patient data, so it reaches the coordinator word for word
        raise ConfigError(
            f"site {site} agreed to {agreed.describe()} (site config concept_catalog), but this run uses "
            f"{load_concepts().describe()}; the site takes no part until both name the same catalog")


def add_catalog_argument(parser: Any) -> None:
    """``--concepts CATALOG_YAML`` for the commands that read data (train, evaluate, validate)."""
    parser.add_argument("--concepts", metavar="CATALOG_YAML", default="",
                        help="concept catalog the federation agreed on (default: the packaged one)")


def to_canonical(values: np.ndarray, concept: str, unit: str) -> np.ndarray:
    """Convert ``values`` recorded in ``unit`` to ``concept``'s canonical unit (float64)."""
    scale, offset = load_concepts().get(concept).conversion(unit)
    return np.asarray(values, dtype=np.float64) * scale + offset


def from_canonical(values: np.ndarray, concept: str, unit: str) -> np.ndarray:
    """Inverse of :func:`to_canonical` (used by the synthetic generator and round-trip tests)."""
    scale, offset = load_concepts().get(concept).conversion(unit)
    return (np.asarray(values, dtype=np.float64) - offset) / scale
