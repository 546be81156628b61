"""Site harmonization: local codes -> canonical concepts and units, and ICU stays, per shard.

Every decision about a code is made once per distinct code (``CodeMapper``) and then applied to whole
shards with numpy indexing, so the cost per event is a handful of vectorized operations.
Invariants: a code falls in exactly one category (``CATEGORIES``), in that precedence order; stays never
overlap; a stay ends at the first end code after its start or at death, whichever is earlier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import meds
import numpy as np

from clin_jepa.config import CodeRule, SiteConfig, compile_regex
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.meds import NAT, Shard
from clin_jepa.data.quality import apply_policy, drop_rules, flag_rows, take_rows
from clin_jepa.errors import ConfigError

HOUR_US = 3_600_000_000
CATEGORIES = ("stay", "special", "mapped", "ignored", "unmapped")
STAY, SPECIAL, MAPPED, IGNORED, UNMAPPED = range(len(CATEGORIES))
SPECIAL_CODES = (meds.birth_code, meds.death_code)
MIN_STAY_HOURS = 24


def rule_conversion(rule: CodeRule) -> tuple[int, float, float]:
    """``(concept index, scale, offset)`` of one code_map rule; ConfigError saying why it cannot be used.

    A rule's own ``scale``/``offset`` win over the units library (for a unit no library knows).
    """
    table = load_concepts()
    try:
        concept = table.get(rule.concept)
    except KeyError:
        raise ConfigError(f"concept: unknown concept {rule.concept!r}; {table.describe()} has "
                          f"{', '.join(table.names)}") from None
    if concept.kind == "treatment":
        if rule.unit is not None or rule.declared is not None:
            raise ConfigError(f"unit: {rule.concept!r} is a treatment and takes no unit, scale or offset")
        return table.index(rule.concept), 1.0, 0.0
    if rule.declared is not None:
        return (table.index(rule.concept), *rule.declared)
    if rule.unit is None:
        raise ConfigError(f"unit: required for measurement concept {rule.concept!r} (canonical unit "
                          f"{concept.unit!r}), or declare scale/offset")
    try:
        scale, offset = concept.conversion(rule.unit)
    except ConfigError as exc:
        raise ConfigError(f"unit: {exc}; declare scale/offset for a unit no library knows") from None
    return table.index(rule.concept), scale, offset


def rule_problems(cfg: SiteConfig) -> list[str]:
    """Problems with the code map itself: unknown concept names, missing or unconvertible units."""
    problems = []
    for i, rule in enumerate(cfg.code_map):
        try:
            rule_conversion(rule)
        except ConfigError as exc:
            problems.append(f"code_map[{i}] ({'regex' if rule.regex else 'code'} {rule.pattern!r}).{exc}")
    return problems


def _usable(rule: CodeRule) -> tuple[int, float, float] | None:
    """``(concept index, scale, offset)`` for a valid rule; None for one that ``rule_problems`` reports."""
    try:
        return rule_conversion(rule)
    except ConfigError:
        return None


@dataclass
class CodeInfo:
    """Per distinct code of one shard: category, concept index (-1 if none), affine unit conversion."""

    category: np.ndarray  # int8
    concept: np.ndarray  # int16
    scale: np.ndarray  # float64
    offset: np.ndarray  # float64
    is_start: np.ndarray  # bool
    is_end: np.ndarray  # bool
    is_birth: np.ndarray  # bool
    is_death: np.ndarray  # bool


class CodeMapper:
    """Decides each code's fate from a site config, remembering decisions across shards."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self._start = compile_regex(cfg.stay.start)
        self._end = compile_regex(cfg.stay.end)
        self._rules = [(rule, _usable(rule)) for rule in cfg.code_map]
        self._memo: dict[str, tuple[int, int, float, float, bool, bool]] = {}

    def decide(self, code: str) -> tuple[int, int, float, float, bool, bool]:
        """``(category, concept, scale, offset, is_start, is_end)`` for one code."""
        hit = self._memo.get(code)
        if hit is None:
            hit = self._memo[code] = self._decide(code)
        return hit

    def _decide(self, code: str) -> tuple[int, int, float, float, bool, bool]:
        start = self._start.fullmatch(code) is not None
        end = self._end.fullmatch(code) is not None and not start
        if start or end:
            return STAY, -1, 1.0, 0.0, start, end
        if code in SPECIAL_CODES:
            return SPECIAL, -1, 1.0, 0.0, False, False
        for rule, usable in self._rules:
            if rule.matches(code):
                if usable is None:
                    return UNMAPPED, -1, 1.0, 0.0, False, False
                return MAPPED, usable[0], usable[1], usable[2], False, False
        if self.cfg.is_ignored(code):
            return IGNORED, -1, 1.0, 0.0, False, False
        return UNMAPPED, -1, 1.0, 0.0, False, False

    def rule_of(self, code: str) -> CodeRule | None:
        """The first usable code_map rule matching ``code`` (None for stay, special, ignored, unmapped)."""
        if self.decide(code)[0] != MAPPED:
            return None
        return next(rule for rule, usable in self._rules if usable is not None and rule.matches(code))

    def code_info(self, codes: list[str]) -> CodeInfo:
        rows = [self.decide(c) for c in codes]
        cols = list(zip(*rows, strict=True)) if rows else [()] * 6
        return CodeInfo(
            category=np.array(cols[0], dtype=np.int8),
            concept=np.array(cols[1], dtype=np.int16),
            scale=np.array(cols[2], dtype=np.float64),
            offset=np.array(cols[3], dtype=np.float64),
            is_start=np.array(cols[4], dtype=bool),
            is_end=np.array(cols[5], dtype=bool),
            is_birth=np.array([c == meds.birth_code for c in codes], dtype=bool),
            is_death=np.array([c == meds.death_code for c in codes], dtype=bool),
        )


@dataclass
class Harmonized:
    """One shard after mapping: per event concept index (-1 = none) and canonical value (NaN = none)."""

    shard: Shard
    info: CodeInfo
    concept: np.ndarray  # int16 per event
    value: np.ndarray  # float64 per event, canonical unit
    dropped: dict[str, int] = field(default_factory=dict)  # events removed per data_quality rule
    min_hours: int = MIN_STAY_HOURS  # the site's stay.min_hours and stay.context_hours
    context_hours: int = MIN_STAY_HOURS

    def code_counts(self) -> np.ndarray:
        """Events per distinct code of the shard (aligned with ``shard.codes``)."""
        return np.bincount(self.shard.code_index, minlength=len(self.shard.codes))


def harmonize(shard: Shard, mapper: CodeMapper) -> Harmonized:
    """Map one shard's codes and values, after removing the rows its ``data_quality`` policy drops."""
    info = mapper.code_info(shard.codes)
    idx = shard.code_index
    concept = info.concept[idx]
    value = shard.value * info.scale[idx] + info.offset[idx]
    rules = drop_rules(mapper.cfg.data_quality)
    hours = {"min_hours": mapper.cfg.stay.min_hours, "context_hours": mapper.cfg.stay.context_hours}
    if not rules:
        return Harmonized(shard, info, concept, value, **hours)
    flags = flag_rows(shard, concept, value, info.is_birth, info.is_death, rules)
    keep, dropped = apply_policy(flags, mapper.cfg.data_quality, len(shard))
    if not keep.all():
        shard, concept, value = take_rows(shard, keep), concept[keep], value[keep]
    return Harmonized(shard, info, concept, value, dropped, **hours)


@dataclass
class Stays:
    """ICU stays of one shard, sorted by (subject, start). Times are int64 microseconds.

    ``eligible``: lasts >= ``stay.min_hours`` (24) and the subject is alive ``stay.context_hours`` (24)
    after the start.
    """

    subject: np.ndarray
    start: np.ndarray
    end: np.ndarray
    birth: np.ndarray  # NAT if unknown
    death: np.ndarray  # NAT if none
    eligible: np.ndarray

    def __len__(self) -> int:
        return len(self.subject)

    def take(self, mask: np.ndarray) -> Stays:
        return Stays(*(getattr(self, f)[mask] for f in
                       ("subject", "start", "end", "birth", "death", "eligible")))


def _time_per_subject(subject: np.ndarray, time: np.ndarray, rows: np.ndarray, wanted: np.ndarray,
                      last: bool = False) -> np.ndarray:
    """Earliest (or latest) non-null time among ``rows`` for each ``wanted`` subject; NAT if none."""
    out = np.full(len(wanted), NAT, dtype=np.int64)
    rows = rows[time[rows] != NAT]
    if len(rows) == 0 or len(wanted) == 0:
        return out
    order = np.lexsort((time[rows], subject[rows]))
    subj, t = subject[rows][order], time[rows][order]
    edge = subj[1:] != subj[:-1]
    pick = np.r_[edge, True] if last else np.r_[True, edge]
    subj, t = subj[pick], t[pick]
    pos = np.clip(np.searchsorted(subj, wanted), 0, len(subj) - 1)
    hit = subj[pos] == wanted
    out[hit] = t[pos[hit]]
    return out


def find_stays(h: Harmonized) -> Stays:
    """ICU stays: a start code opens one unless a stay is already open; the next end code closes it.

    A stay with no later end code is closed by the subject's last event in the shard.
    """
    s = h.shard
    is_start = h.info.is_start[s.code_index]
    is_end = h.info.is_end[s.code_index]
    rows = np.flatnonzero((is_start | is_end) & (s.time != NAT))
    subj, t, end_flag = s.subject[rows], s.time[rows], is_end[rows]
    order = np.lexsort((~end_flag, t, subj))  # at equal times an end closes the old stay first
    subj, t, end_flag = subj[order], t[order], end_flag[order]
    prev_start = np.r_[False, (~end_flag[:-1]) & (subj[1:] == subj[:-1])]
    opens = np.flatnonzero(~end_flag & ~prev_start)
    end_pos = np.flatnonzero(end_flag)
    j = np.searchsorted(end_pos, opens, side="right")
    closed = j < len(end_pos)
    closed[closed] = subj[end_pos[j[closed]]] == subj[opens[closed]]
    st_subj, st_start = subj[opens], t[opens]
    st_end = np.full(len(opens), NAT, dtype=np.int64)
    st_end[closed] = t[end_pos[j[closed]]]
    if (~closed).any():
        open_subj = st_subj[~closed]
        rows_open = np.flatnonzero(np.isin(s.subject, open_subj))
        st_end[~closed] = _time_per_subject(s.subject, s.time, rows_open, open_subj, last=True)
    code_rows = s.code_index
    birth = _time_per_subject(s.subject, s.time, np.flatnonzero(h.info.is_birth[code_rows]), st_subj)
    death = _time_per_subject(s.subject, s.time, np.flatnonzero(h.info.is_death[code_rows]), st_subj)
    dies_in = (death != NAT) & (death > st_start) & (death < st_end)
    st_end = np.where(dies_in, death, st_end)
    alive_at_context = (death == NAT) | (death > st_start + h.context_hours * HOUR_US)
    eligible = (st_end - st_start >= h.min_hours * HOUR_US) & alive_at_context
    return Stays(st_subj, st_start, st_end, birth, death, eligible)


@dataclass
class StayEvents:
    """Mapped, timed events attributed to a stay: the latest stay that started at or before the event."""

    stay: np.ndarray  # int64 index into the Stays passed to ``attribute_events``
    offset: np.ndarray  # int64 microseconds since the stay's start
    concept: np.ndarray  # int16 canonical concept index
    value: np.ndarray  # float64 canonical value (NaN for treatments or missing)


def attribute_events(h: Harmonized, stays: Stays, horizon_hours: int,
                     keep: np.ndarray | None = None) -> StayEvents:
    """Events within ``horizon_hours`` of the start of the stay they belong to (no per-event loops).

    With a boolean ``keep`` over ``stays``, only events of kept stays are returned and ``stay`` indexes
    the kept stays (``stays.take(keep)``). Lookups are made per run of equal ``subject_id`` (MEDS keeps a
    subject's rows together, so runs are few; unsorted input only makes runs shorter, never wrong).
    """
    s = h.shard
    if len(stays) == 0 or len(s) == 0:
        return StayEvents(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16), np.zeros(0))
    first = np.flatnonzero(np.r_[True, stays.subject[1:] != stays.subject[:-1]])  # stays sorted by subject
    uniq, count = stays.subject[first], np.diff(np.r_[first, len(stays)])
    run = np.flatnonzero(np.r_[True, s.subject[1:] != s.subject[:-1]])
    length = np.diff(np.r_[run, len(s)])
    pos = np.clip(np.searchsorted(uniq, s.subject[run]), 0, len(uniq) - 1)
    has = uniq[pos] == s.subject[run]
    cand = np.repeat(np.where(has, first[pos] + count[pos] - 1, 0), length)  # the subject's last stay
    multi = np.flatnonzero(np.repeat(has & (count[pos] > 1), length))
    if len(multi):  # step back over later stays; at most max(stays per subject) rounds
        m_cand, m_lo, m_t = cand[multi], np.repeat(first[pos], length)[multi], s.time[multi]
        while len(back := np.flatnonzero((stays.start[m_cand] > m_t) & (m_cand > m_lo))):
            m_cand[back] -= 1
        cand[multi] = m_cand
    offset = s.time - stays.start[cand]
    ok = (np.repeat(has, length) & (h.concept >= 0) & (s.time != NAT) & (offset >= 0)
          & (offset < horizon_hours * HOUR_US))
    if keep is not None:
        ok &= keep[cand]
        cand = (np.cumsum(keep) - 1)[cand]
    sel = np.flatnonzero(ok)
    return StayEvents(cand[sel].astype(np.int64), offset[sel], h.concept[sel], h.value[sel])


def eligible_stay_events(h: Harmonized, horizon_hours: int) -> tuple[Stays, Stays, StayEvents]:
    """``(all stays, eligible stays, events of eligible stays)``; event ``stay`` indexes eligible stays.

    Events are attributed against all stays first so an ineligible stay still claims its own events.
    """
    stays = find_stays(h)
    return stays, stays.take(stays.eligible), attribute_events(h, stays, horizon_hours, stays.eligible)
