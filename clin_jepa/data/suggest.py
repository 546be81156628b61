"""``clin-jepa validate --suggest``: code_map entries for a site's unmapped codes, from its code metadata.

Reads ``metadata/codes.parquet`` (MEDS: ``code``, ``description``, ``parent_codes``; a ``unit``,
``units`` or ``valueuom`` column is used when present), keeps the codes the site config leaves unmapped,
and proposes a concept for each from a LOINC code in the code or its parents, else from words of its
description; the unit is the first of the code's last ``//`` part, a parenthesized unit at the end of
the description, or the metadata's unit column that the units library can convert to the concept's
canonical unit. Suggestions are YAML to review and paste, never applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow.parquet as pq
import yaml

from clin_jepa.config import SiteConfig
from clin_jepa.data.concepts import Concept, load_concepts
from clin_jepa.data.harmonize import UNMAPPED, CodeMapper
from clin_jepa.data.meds import codes_path
from clin_jepa.errors import ConfigError

# LOINC codes of the packaged concepts (the common serum/blood and vital-sign codes).
LOINC = {
    "8867-4": "heart_rate", "8480-6": "sbp", "8462-4": "dbp", "8478-0": "map", "9279-1": "resp_rate",
    "59408-5": "spo2", "2708-6": "spo2", "8310-5": "temperature", "2160-0": "creatinine", "3094-0": "bun",
    "2951-2": "sodium", "2823-3": "potassium", "1963-8": "bicarbonate", "2524-7": "lactate",
    "718-7": "hemoglobin", "6690-2": "wbc", "777-3": "platelets", "2345-7": "glucose", "9269-2": "gcs_total",
    "3150-0": "fio2", "9187-6": "urine_output", "1975-2": "bilirubin", "6301-6": "inr", "1751-7": "albumin",
    "2744-1": "ph", "11558-4": "ph",
}
# Words of descriptions, tried in order (longer phrases first so "mean arterial" wins over "arterial").
WORDS = (
    ("heart rate", "heart_rate"), ("pulse rate", "heart_rate"), ("systolic", "sbp"), ("diastolic", "dbp"),
    ("mean arterial", "map"), ("respiratory rate", "resp_rate"), ("oxygen saturation", "spo2"),
    ("spo2", "spo2"), ("temperature", "temperature"), ("creatinine", "creatinine"),
    ("urea nitrogen", "bun"), ("bun", "bun"), ("sodium", "sodium"), ("potassium", "potassium"),
    ("bicarbonate", "bicarbonate"), ("lactate", "lactate"), ("hemoglobin", "hemoglobin"),
    ("haemoglobin", "hemoglobin"), ("white blood", "wbc"), ("leukocytes", "wbc"), ("platelet", "platelets"),
    ("glucose", "glucose"), ("glasgow", "gcs_total"), ("gcs", "gcs_total"), ("fio2", "fio2"),
    ("inspired o2", "fio2"), ("urine", "urine_output"), ("bilirubin", "bilirubin"), ("inr", "inr"),
    ("albumin", "albumin"), ("ph", "ph"), ("norepinephrine", "vasopressor"), ("vasopressin", "vasopressor"),
    ("epinephrine", "vasopressor"), ("crystalloid", "iv_fluids"), ("saline", "iv_fluids"),
    ("mechanical ventilation", "mechanical_ventilation"), ("antibiotic", "antibiotics"),
    ("insulin", "insulin"), ("diuretic", "diuretic"), ("furosemide", "diuretic"),
)
UNIT_COLUMNS = ("unit", "units", "valueuom")
_LOINC_RE = re.compile(r"LOINC[/:]+(\d{1,7}-\d)", re.IGNORECASE)
_PAREN_UNIT = re.compile(r"\(([^()]+)\)\s*$")


@dataclass(frozen=True)
class Suggestion:
    code: str
    concept: str
    unit: str | None
    why: str


def _concept_of(code: str, description: str, parents: list[str]) -> tuple[str, str] | None:
    names = set(load_concepts().names)
    for text in (code, *parents):
        m = _LOINC_RE.search(text)
        if m and LOINC.get(m.group(1)) in names:
            return LOINC[m.group(1)], f"LOINC {m.group(1)}"
    words = re.sub(r"[^a-z0-9 ]+", " ", description.lower())
    padded = f" {words} "
    for phrase, concept in WORDS:
        if f" {phrase} " in padded and concept in names:
            return concept, f"description {description!r}"
    for name in names:  # a federation's own concepts: their names as words
        if f" {name.replace('_', ' ')} " in padded:
            return name, f"description {description!r}"
    return None


def _unit_of(concept: Concept, candidates: list[str]) -> str | None:
    for unit in candidates:
        if not re.search(r"[A-Za-z%/\[]", unit):  # a bare number (an item id) is no unit
            continue
        try:
            concept.conversion(unit)
        except ConfigError:
            continue
        return unit
    return None


def suggest(cfg: SiteConfig) -> list[Suggestion]:
    """Suggestions for the codes of ``metadata/codes.parquet`` that ``cfg`` leaves unmapped."""
    path = codes_path(cfg.data_path)
    if not path.is_file():
        raise ConfigError(f"{path}: no code metadata to suggest from (MEDS metadata/codes.parquet)")
    table = pq.read_table(path)
    cols = table.column_names
    rows = table.to_pylist()
    mapper, catalog = CodeMapper(cfg), load_concepts()
    out = []
    for row in rows:
        code = row.get("code")
        if not isinstance(code, str) or mapper.decide(code)[0] != UNMAPPED:
            continue
        description = row.get("description") or ""
        found = _concept_of(code, description, [p for p in (row.get("parent_codes") or []) if p])
        if found is None:
            continue
        concept = catalog.get(found[0])
        unit = None
        if concept.kind == "measurement":
            paren = _PAREN_UNIT.search(description)
            candidates = [code.rsplit("//", 1)[-1], *([paren.group(1)] if paren else []),
                          *(str(row[c]) for c in UNIT_COLUMNS if c in cols and row.get(c))]
            unit = _unit_of(concept, candidates)
        out.append(Suggestion(code, concept.name, unit, found[1]))
    return out


def suggestions_yaml(items: list[Suggestion], catalog_units: dict[str, str | None]) -> str:
    """The suggestions as ``code_map`` YAML lines, each with a comment saying why."""
    if not items:
        return "# no suggestions: every code in metadata/codes.parquet is mapped, ignored or unrecognized\n"
    lines = ["# suggested code_map entries (from metadata/codes.parquet): review each before pasting"]
    for s in items:
        entry = {"code": s.code, "concept": s.concept}
        if catalog_units.get(s.concept) is not None:
            entry["unit"] = s.unit or catalog_units[s.concept]
        flow = yaml.safe_dump([entry], default_flow_style=True, width=1000, allow_unicode=True).strip()
        check = "" if s.unit or catalog_units.get(s.concept) is None else "; unit not found: CHECK"
        lines.append(f"- {flow[1:-1]}  # {s.why}{check}")
    return "\n".join(lines) + "\n"
