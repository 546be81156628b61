"""Binary prediction tasks at 24 h into an ICU stay, declared in YAML (``clin_jepa/tasks/*.yaml``).

A task file holds ``name``, ``kind`` (``death`` | ``threshold``), ``window: [from_h, to_h]`` in hours
after the stay start (``to_h`` may be null for death: until the stay ends) and, for thresholds,
``concept``, ``op`` (``<`` | ``>``) and ``value`` in the concept's canonical unit.
Labels: death -> 1 if the subject dies in the stay within the window, else 0. Threshold -> 1 if any
value in the window crosses, 0 if measured without crossing, NaN if not measured. Windows are
left-open, right-closed: (from_h, to_h].
A threshold task may set ``exclude_if_abnormal_before: true`` (default false) to ask about a *new*
abnormality, as incident-event tasks do (AKI prediction leaves out stays already in AKI): the label is
NaN for a stay whose last value of the concept in [0, from_h] already crosses the threshold; a stay with
no value before the window keeps its label. ``exclude_if_abnormal_before: any`` excludes a stay when *any*
value in [0, from_h] crosses (MEDS-DEV's "must not have shown abnormal values previously").

Tasks live in ``clin_jepa/tasks/*.yaml`` (the default set) and ``clin_jepa/tasks/meds_dev/*.yaml`` (the
MEDS-DEV threshold variants, chosen by name: ``load_tasks(names=[...])``, ``--tasks``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import yaml

from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.harmonize import HOUR_US, StayEvents, Stays
from clin_jepa.data.meds import NAT
from clin_jepa.errors import ConfigError

KINDS = ("death", "threshold")
OPS = ("<", ">")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    window: tuple[float, float | None]
    concept: str | None = None
    op: str | None = None
    value: float | None = None
    exclude_if_abnormal_before: bool | str = False  # True (last value before), "any", False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def horizon_hours(self) -> float:
        """How far after the stay start this task looks (its window's end, or the start if open)."""
        return self.window[1] if self.window[1] is not None else self.window[0]


def parse_task(raw: object, source: str) -> TaskSpec:
    """Check one task mapping; every bad value is a ConfigError naming the key and the allowed values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with name, kind, window")
    allowed = {"name", "kind", "window", "concept", "op", "value", "exclude_if_abnormal_before"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    name, kind = raw.get("name"), raw.get("kind")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: name: required, a non-empty string")
    if kind not in KINDS:
        raise ConfigError(f"{source}: kind: {kind!r} is not one of {list(KINDS)}")
    window = raw.get("window")
    if (not isinstance(window, list) or len(window) != 2 or not isinstance(window[0], int | float)
            or not (window[1] is None or isinstance(window[1], int | float))
            or (window[1] is not None and window[1] <= window[0]) or window[0] < 0):
        raise ConfigError(f"{source}: window: expected [from_hours, to_hours] with 0 <= from < to "
                          f"(to may be null for death), got {window!r}")
    if window[1] is None and kind != "death":
        raise ConfigError(f"{source}: window: an open end (null) is only allowed for kind death")
    win = (float(window[0]), None if window[1] is None else float(window[1]))
    exclude = raw.get("exclude_if_abnormal_before", False)
    if kind == "death":
        if "exclude_if_abnormal_before" in raw:
            raise ConfigError(f"{source}: exclude_if_abnormal_before: only allowed for kind threshold")
        return TaskSpec(name, kind, win)
    if not isinstance(exclude, bool) and exclude != "any":
        raise ConfigError(f"{source}: exclude_if_abnormal_before: expected true, false or any, "
                          f"got {exclude!r}")
    measurements = load_concepts().measurement_names
    concept, op, value = raw.get("concept"), raw.get("op"), raw.get("value")
    if concept not in measurements:
        raise ConfigError(f"{source}: concept: {concept!r} is not a measurement concept; allowed: "
                          f"{', '.join(measurements)}")
    if op not in OPS:
        raise ConfigError(f"{source}: op: {op!r} is not one of {list(OPS)}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{source}: value: expected a number in the canonical unit, got {value!r}")
    return TaskSpec(name, kind, win, concept, op, float(value), exclude)


def load_tasks(directory: str | Path | None = None, names: list[str] | None = None) -> tuple[TaskSpec, ...]:
    """Task specs sorted by name (from the packaged ``clin_jepa/tasks`` unless ``directory`` is given);
    with ``names``, those tasks in that order, also from the packaged MEDS-DEV variants (``meds_dev/``)."""
    root = Path(directory) if directory is not None else Path(str(files("clin_jepa").joinpath("tasks")))
    paths = sorted(root.glob("*.yaml"))
    if directory is None and names is not None:
        paths += sorted((root / "meds_dev").glob("*.yaml"))
    specs = []
    for path in paths:
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        specs.append(parse_task(raw, str(path)))
    specs.sort(key=lambda s: s.name)
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError(f"{root}: two task files declare the same name")
    if names is not None:
        known = {s.name: s for s in specs}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(f"tasks: unknown task(s) {missing}; allowed: {sorted(known)}")
        specs = [known[n] for n in names]
    return tuple(specs)


def compute_labels(specs: tuple[TaskSpec, ...], stays: Stays, events: StayEvents) -> np.ndarray:
    """(len(stays), len(specs)) float32 labels; ``events`` must cover every spec's window."""
    n = len(stays)
    out = np.full((n, len(specs)), np.nan, dtype=np.float32)
    index = {name: i for i, name in enumerate(load_concepts().names)}
    thresholds = [s for s in specs if s.kind == "threshold"]
    if thresholds:  # narrow to the union of the windows (and what precedes them), group by concept
        lo_all = min(-1.0 if s.exclude_if_abnormal_before else s.window[0] for s in thresholds) * HOUR_US
        hi_all = max(s.window[1] for s in thresholds) * HOUR_US  # type: ignore[type-var]
        near = np.flatnonzero((events.offset > lo_all) & (events.offset <= hi_all)
                              & np.isfinite(events.value))
        near = near[np.lexsort((events.offset[near], events.concept[near]))]  # by concept, then time
        concept = events.concept[near]
        bounds = np.searchsorted(concept, np.arange(len(index) + 1))
    for j, spec in enumerate(specs):
        lo = spec.window[0] * HOUR_US
        if spec.kind == "death":
            hi = stays.end - stays.start if spec.window[1] is None else np.minimum(
                stays.end - stays.start, spec.window[1] * HOUR_US)
            since = stays.death - stays.start
            died = (stays.death != NAT) & (since > lo) & (since <= hi)
            out[:, j] = died.astype(np.float32)
            continue
        c = index[spec.concept]
        rows = near[bounds[c]:bounds[c + 1]]
        offset, value, stay = events.offset[rows], events.value[rows], events.stay[rows]
        inside = (offset > lo) & (offset <= spec.window[1] * HOUR_US)
        crosses = value < spec.value if spec.op == "<" else value > spec.value
        measured = np.bincount(stay[inside], minlength=n) > 0
        crossed = np.bincount(stay[inside & crosses], minlength=n) > 0
        label = np.where(measured, crossed.astype(np.float32), np.nan)
        before = offset <= lo
        if spec.exclude_if_abnormal_before == "any":
            label[np.bincount(stay[before & crosses], minlength=n) > 0] = np.nan
        elif spec.exclude_if_abnormal_before:  # rows are in time order: later writes win, the last one stays
            last_crosses = np.zeros(n, bool)
            last_crosses[stay[before]] = crosses[before]
            label[last_crosses] = np.nan
        out[:, j] = label
    return out
