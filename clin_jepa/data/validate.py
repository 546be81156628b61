"""Dataset validation against the MEDS contract and a site config, collecting every problem.

``validate_site(cfg)`` streams the shards once, records every problem it finds (with file, column and
example rows) and raises one :class:`DataValidationError` listing all of them, or returns a
:class:`ValidationSummary`. Nothing it does writes to disk. Schema checks live in ``meds_checks``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clin_jepa.config import QUALITY_RULES, CodeRule, DataQuality, SiteConfig
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.harmonize import (
    HOUR_US,
    IGNORED,
    MAPPED,
    STAY,
    UNMAPPED,
    CodeMapper,
    Harmonized,
    eligible_stay_events,
    harmonize,
    rule_problems,
)
from clin_jepa.data.meds import NAT, SPLITS, Shard, codes_path, shard_paths, table_to_shard
from clin_jepa.data.meds_checks import (
    EXPECTED,
    Problems,
    check_codes_file,
    check_data_schema,
    read_splits_checked,
    rows_text,
)
from clin_jepa.data.quality import DESCRIPTION, flag_rows
from clin_jepa.data.tasks import TaskSpec, compute_labels, load_tasks
from clin_jepa.errors import DataValidationError

YEAR_RANGE = (1900, 2100)
RowsText = Callable[[np.ndarray], str]


@dataclass
class ValidationSummary:
    """What a valid dataset contains, as printed by ``clin-jepa validate``."""

    site: str
    root: Path
    n_files: int = 0
    n_events: int = 0
    n_subjects: int = 0
    split_subjects: dict[str, int] = field(default_factory=dict)
    n_stays: int = 0
    n_eligible: int = 0
    icu_hours: float = 0.0
    code_counts: Counter = field(default_factory=Counter)
    code_category: dict[str, int] = field(default_factory=dict)
    code_file: dict[str, str] = field(default_factory=dict)  # first shard each code was seen in
    code_concept: dict[str, str] = field(default_factory=dict)
    task_positive: dict[str, int] = field(default_factory=dict)
    task_defined: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)  # events removed per data_quality rule
    conversions: dict[str, str] = field(default_factory=dict)  # code -> the conversion, with an example
    stay: str = ""  # the stay definition used
    catalog: str = ""  # the concept catalog used

    def codes_in(self, category: int) -> list[tuple[str, int]]:
        return sorted(((c, n) for c, n in self.code_counts.items() if self.code_category[c] == category),
                      key=lambda x: (-x[1], x[0]))

    @property
    def unmapped_share(self) -> float:
        unmapped = sum(n for _, n in self.codes_in(UNMAPPED))
        return unmapped / self.n_events if self.n_events else 0.0

    def format(self) -> str:
        mapped, unmapped = self.codes_in(MAPPED), self.codes_in(UNMAPPED)
        splits = ", ".join(f"{k} {v}" for k, v in self.split_subjects.items())
        lines = [
            f"site {self.site}: {self.root} - valid",
            f"  files: {self.n_files} shard(s), {self.n_events:,} events, {self.n_subjects:,} subjects "
            f"({splits})",
            f"  {self.catalog}",
            f"  stays: {self.stay}: {self.n_stays:,} found, {self.n_eligible:,} eligible, "
            f"{self.icu_hours:,.0f} hours in eligible stays",
            f"  mapped codes ({len(mapped)}, {sum(n for _, n in mapped):,} events):",
            *(f"    {c} -> {self.code_concept[c]}: {n:,}" for c, n in mapped),
            f"  unit conversions ({len(self.conversions)}):",
            *(f"    {c}: {text}" for c, text in sorted(self.conversions.items())),
            "  data_quality drops: " + (", ".join(f"{rule} {n:,} event(s) dropped"
                                                  for rule, n in sorted(self.dropped.items())) or "none"),
            "  stay codes: " + ", ".join(f"{c} {n:,}" for c, n in self.codes_in(STAY)),
            f"  ignored codes ({len(self.codes_in(IGNORED))}): "
            + (", ".join(f"{c} {n:,}" for c, n in self.codes_in(IGNORED)[:10]) or "none"),
            f"  unmapped codes ({len(unmapped)}, {self.unmapped_share:.2%} of events): "
            + (", ".join(f"{c} {n:,}" for c, n in unmapped[:10]) or "none")
            + (f", ... {len(unmapped) - 10} more" if len(unmapped) > 10 else ""),
            "  task positive rates (eligible stays with a defined label):",
        ]
        if self.n_eligible == 0:
            lines.insert(3, "  note: no eligible ICU stays, so this site has nothing to train or evaluate on")
        for task, defined in self.task_defined.items():
            pos = self.task_positive[task]
            rate = f"{pos / defined:.1%}" if defined else "n/a"
            lines.append(f"    {task}: {rate} ({pos:,}/{defined:,})")
        return "\n".join(lines)


def _time_checks(p: Problems, name: str, h: Harmonized, rows_of: RowsText) -> None:
    """Times outside the plausible years (a schema-level error whatever the data_quality policy)."""
    s = h.shard
    lo, hi = (np.datetime64(f"{y}-01-01", "us").astype(np.int64) for y in YEAR_RANGE)
    bad = np.flatnonzero((s.time != NAT) & ((s.time < lo) | (s.time >= hi)))
    if len(bad):
        p.add(f"{name}: column 'time': {len(bad)} time(s) outside {YEAR_RANGE[0]}-{YEAR_RANGE[1]}; "
              f"{rows_of(bad)}")


def _quality_checks(p: Problems, name: str, h: Harmonized, policy: DataQuality, rows_of: RowsText) -> None:
    """Content problems the site's data_quality leaves as errors (dropped ones are gone from ``h``)."""
    rules = tuple(r for r in QUALITY_RULES if getattr(policy, r) == "error")
    flags = flag_rows(h.shard, h.concept, h.value, h.info.is_birth, h.info.is_death, rules)
    column = {"events_after_death": "time", "events_before_birth": "time", "duplicates": "code"}
    for rule in rules:
        bad = np.flatnonzero(flags[rule])
        if len(bad):
            p.add(f"{name}: column '{column.get(rule, 'numeric_value')}': {len(bad)} {DESCRIPTION[rule]}; "
                  f"{rows_of(bad)} (data_quality.{rule}: drop removes them at read time)")


def validate_site(cfg: SiteConfig, tasks: tuple[TaskSpec, ...] | None = None) -> ValidationSummary:
    """Check the site's dataset and code map; raise DataValidationError listing every problem."""
    tasks = load_tasks() if tasks is None else tasks
    root = cfg.data_path
    p = Problems()
    p.extend(rule_problems(cfg))
    summary = ValidationSummary(cfg.site, root, task_positive={t.name: 0 for t in tasks},
                                task_defined={t.name: 0 for t in tasks}, stay=cfg.stay.describe(),
                                catalog=load_concepts().describe())
    if not root.is_dir():
        p.add(f"{root}: data.path does not exist or is not a folder")
        raise DataValidationError(f"site {cfg.site}", p.items)
    splits = read_splits_checked(root, p)
    check_codes_file(codes_path(root), p)
    paths = shard_paths(root)
    summary.n_files = len(paths)
    if not paths:
        p.add(f"{root}/data: no data shards (expected data/**/*.parquet)")
    mapper = CodeMapper(cfg)
    split_ids = np.fromiter(splits or {}, np.int64)
    usable = 0
    seen_subjects: list[tuple[str, np.ndarray]] = []
    horizon = int(np.ceil(max([1, *(t.horizon_hours for t in tasks)])))
    for path in paths:
        name = str(path.relative_to(root))
        table, names = _read(path, name, p)
        if table is None or not check_data_schema(table, name, p, names):
            continue
        s = table_to_shard(path, table)
        usable += 1

        def rows_of(rows: np.ndarray, s: Shard = s) -> str:
            return rows_text(s, rows)

        h = harmonize(s, mapper)
        _time_checks(p, name, h, rows_of)
        _quality_checks(p, name, h, cfg.data_quality, rows_of)
        uniq = np.unique(s.subject)
        seen_subjects.append((name, uniq))
        if splits is not None:
            missing = uniq[~np.isin(uniq, split_ids)]
            if len(missing):
                p.add(f"{name}: column 'subject_id': {len(missing)} subject(s) missing from "
                      f"metadata/subject_splits.parquet, e.g. {missing[:5].tolist()}")
        _count_shard(summary, h, mapper, tasks, horizon, name)
    if usable == len(paths) and paths and summary.n_events == 0:
        p.add(f"{root}/data: the data shards hold no events")
    _dataset_checks(p, cfg, summary, seen_subjects, splits)
    if p.items:
        raise DataValidationError(f"site {cfg.site} ({root})", p.items)
    return summary


def _count_shard(summary: ValidationSummary, h: Harmonized, mapper: CodeMapper,
                 tasks: tuple[TaskSpec, ...], horizon: int, name: str) -> None:
    """Add one shard's events, codes, stays and labels to ``summary``."""
    table = load_concepts()
    _, first_row = np.unique(h.shard.code_index, return_index=True)
    example = np.full(len(h.shard.codes), np.nan)
    example[h.shard.code_index[first_row]] = h.shard.value[first_row]
    for i, (code, n, cat, concept) in enumerate(zip(h.shard.codes, h.code_counts(), h.info.category,
                                                    h.info.concept, strict=True)):
        if n == 0:
            continue
        summary.code_counts[code] += int(n)
        summary.code_category[code] = int(cat)
        summary.code_file.setdefault(code, name)
        if concept >= 0:
            target, rule = table.get(table.names[concept]), mapper.rule_of(code)
            unit = "" if rule is None or not rule.unit else (
                f" [{rule.unit}]" if rule.unit == target.unit else f" [{rule.unit} -> {target.unit}]")
            summary.code_concept[code] = f"{target.name}{unit}"
            scale, offset = float(h.info.scale[i]), float(h.info.offset[i])
            if target.unit and (scale, offset) != (1.0, 0.0) and code not in summary.conversions:
                summary.conversions[code] = _conversion_text(rule, target.unit, scale, offset, example[i])
    summary.dropped.update(h.dropped)
    summary.n_events += len(h.shard)
    all_stays, stays, ev = eligible_stay_events(h, horizon)
    summary.n_stays += len(all_stays)
    summary.n_eligible += len(stays)
    summary.icu_hours += float((stays.end - stays.start).sum() / HOUR_US)
    labels = compute_labels(tasks, stays, ev)
    for j, t in enumerate(tasks):
        summary.task_defined[t.name] += int((~np.isnan(labels[:, j])).sum())
        summary.task_positive[t.name] += int(np.nansum(labels[:, j]))


def _conversion_text(rule: CodeRule | None, canonical: str, scale: float, offset: float,
                     example: float) -> str:
    """'[/uL] x 0.001 -> 10^9/L (units library), e.g. 12000 -> 12' for the validate summary."""
    unit = rule.unit if rule is not None and rule.unit else "?"
    how = "declared scale/offset" if rule is not None and rule.declared is not None else "units library"
    formula = f"x {scale:.6g}" + (f" {'+' if offset >= 0 else '-'} {abs(offset):.6g}" if offset else "")
    shown = example if np.isfinite(example) else 1.0
    return (f"[{unit}] {formula} -> {canonical} ({how}), e.g. {shown:g} {unit} -> "
            f"{shown * scale + offset:.6g} {canonical}")


def _read(path: Path, name: str, p: Problems) -> tuple[pa.Table | None, list[str]]:
    """The MEDS columns of one shard (other columns, e.g. free text, are never loaded) and all names."""
    try:
        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in names if c in EXPECTED]), names
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is corrupt or not parquet
        p.add(f"{name}: not a readable parquet file ({type(exc).__name__}: {str(exc)[:200]})")
        return None, []


def _dataset_checks(p: Problems, cfg: SiteConfig, summary: ValidationSummary,
                    seen: list[tuple[str, np.ndarray]], splits: dict[int, str] | None) -> None:
    """Checks that need every shard: subjects in two shards, unmapped share, stay codes."""
    if len(seen) > 1:
        names = np.concatenate([np.full(len(u), i) for i, (_, u) in enumerate(seen)])
        subj = np.concatenate([u for _, u in seen])
        order = np.argsort(subj, kind="stable")
        subj, names = subj[order], names[order]
        dup = np.flatnonzero(subj[1:] == subj[:-1])
        if len(dup):
            examples = [f"{subj[i]} ({seen[names[i]][0]} and {seen[names[i + 1]][0]})" for i in dup[:5]]
            p.add(f"column 'subject_id': {len(dup)} subject(s) appear in more than one shard (MEDS keeps a "
                  f"subject in one shard), e.g. {'; '.join(examples)}")
    if summary.n_events:
        share = summary.unmapped_share
        if share > cfg.max_unmapped_share:
            top = ", ".join(f"{c} ({n:,} events, e.g. in {summary.code_file[c]})"
                            for c, n in summary.codes_in(UNMAPPED)[:10])
            p.add(f"column 'code': {share:.2%} of events have codes the code_map does not map "
                  f"(max_unmapped_share {cfg.max_unmapped_share:.2%}); add them to code_map or ignore_codes: "
                  f"{top}")
        codes = summary.code_counts
        mapper = CodeMapper(cfg)
        for part, want in (("start", True), ("end", False)):
            hits = [c for c in codes if mapper.decide(c)[4 if want else 5]]
            if not hits:
                p.add(f"{cfg.stay.key}.{part}: regex {getattr(cfg.stay, part)!r} matches no code in the data")
    if splits is not None:
        summary.split_subjects = {name: sum(1 for v in splits.values() if v == name) for name in SPLITS}
    summary.n_subjects = int(len(np.unique(np.concatenate([u for _, u in seen])))) if seen else 0
