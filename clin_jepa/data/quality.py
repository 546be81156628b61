"""Content problems of real extracts, found per shard and handled by the site's ``data_quality`` policy.

Schema problems (columns, types, corrupt files, subjects in two splits) are always errors
(``meds_checks``). The problems here are facts about the content that hospital IT cannot fix in its EHR:
events stamped after death or before birth, values outside the catalog's plausible range or negative
where impossible, and duplicated events. Each rule is ``error`` (``clin-jepa validate`` lists the rows)
or ``drop`` (the rows are removed when the shard is read, counted, and reported by validate). Nothing is
ever written back to the source data.
"""

from __future__ import annotations

import numpy as np

from clin_jepa.config import QUALITY_RULES, DataQuality
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.meds import NAT, Shard

HOUR_US = 3_600_000_000
DEATH_GRACE_HOURS = 24  # discharge paperwork is routinely stamped after death; later events are a problem

DESCRIPTION = {
    "events_after_death": f"event(s) more than {DEATH_GRACE_HOURS} h after the subject's MEDS_DEATH",
    "events_before_birth": "event(s) before the subject's MEDS_BIRTH",
    "out_of_range": "measurement value(s) outside the catalog's plausible range (after unit conversion)",
    "negative_values": "negative value(s) for measurements that cannot be negative (after unit conversion)",
    "duplicates": "duplicate event(s) (same subject_id, time, code and numeric_value as an earlier row)",
}


def _first_time(s: Shard, flag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event: whether its subject has a timed flagged event, and the earliest such time."""
    timed = s.time != NAT
    rows = np.flatnonzero(flag[s.code_index] & timed)
    if len(rows) == 0:
        return np.zeros(len(s), bool), np.zeros(len(s), np.int64)
    order = np.lexsort((s.time[rows], s.subject[rows]))
    subj, t = s.subject[rows][order], s.time[rows][order]
    first = np.r_[True, subj[1:] != subj[:-1]]
    subj, t = subj[first], t[first]
    pos = np.clip(np.searchsorted(subj, s.subject), 0, len(subj) - 1)
    return (subj[pos] == s.subject) & timed, t[pos]


def _duplicates(s: Shard) -> np.ndarray:
    """Rows equal to an earlier row in (subject, time, code, value); NaN values compare equal."""
    value = np.where(np.isnan(s.value), np.inf, s.value)
    order = np.lexsort((np.arange(len(s)), value, s.code_index, s.time, s.subject))
    keys = (s.subject[order], s.time[order], s.code_index[order], value[order])
    same = np.ones(max(len(s) - 1, 0), bool)
    for k in keys:
        same &= k[1:] == k[:-1]
    out = np.zeros(len(s), bool)
    out[order[1:][same]] = True
    return out


def flag_rows(s: Shard, concept: np.ndarray, value: np.ndarray, is_birth: np.ndarray,
              is_death: np.ndarray, rules: tuple[str, ...] = QUALITY_RULES) -> dict[str, np.ndarray]:
    """Boolean row masks for ``rules`` (default all of ``QUALITY_RULES``; a row may be in several)."""
    found = {}
    if "events_after_death" in rules:
        has_death, death = _first_time(s, is_death)
        found["events_after_death"] = has_death & (s.time > death + DEATH_GRACE_HOURS * HOUR_US)
    if "events_before_birth" in rules:
        has_birth, birth = _first_time(s, is_birth)
        found["events_before_birth"] = has_birth & (s.time < birth)
    if "duplicates" in rules:
        found["duplicates"] = _duplicates(s)
    if "out_of_range" in rules or "negative_values" in rules:
        found.update({k: v for k, v in _value_flags(concept, value).items() if k in rules})
    return found


def _value_flags(concept: np.ndarray, value: np.ndarray) -> dict[str, np.ndarray]:
    table = load_concepts()
    m = len(table.measurements)
    is_measure = (concept >= 0) & (concept < m) & np.isfinite(value)
    c = np.clip(concept, 0, max(m - 1, 0))
    lo = np.array([x.lo for x in table.measurements])[c]
    hi = np.array([x.hi for x in table.measurements])[c]
    nonneg = np.array([x.nonnegative for x in table.measurements])[c]
    # MEDS stores float32: FiO2 0.21 (fraction) reads back as 20.999999 %, which is not out of range
    tol = 1e-6 * np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1.0)
    return {"out_of_range": is_measure & ((value < lo - tol) | (value > hi + tol)),
            "negative_values": is_measure & nonneg & (value < 0)}


def drop_rules(policy: DataQuality) -> tuple[str, ...]:
    return tuple(rule for rule in QUALITY_RULES if policy.drops(rule))


def apply_policy(flags: dict[str, np.ndarray], policy: DataQuality,
                 n: int) -> tuple[np.ndarray, dict[str, int]]:
    """``(rows to keep, dropped events per rule)`` under ``policy``; rules set to error drop nothing."""
    drop = np.zeros(n, bool)
    counts = {}
    for rule in drop_rules(policy):
        counts[rule] = int(flags[rule].sum())
        drop |= flags[rule]
    return ~drop, counts


def take_rows(s: Shard, keep: np.ndarray) -> Shard:
    """The shard without the dropped rows (the same distinct-code list)."""
    return Shard(s.path, s.subject[keep], s.time[keep], s.code_index[keep], s.codes, s.value[keep])
