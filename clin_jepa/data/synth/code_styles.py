"""Recode a synthetic hospital the way a public MEDS ETL would have written it (``synth --code-style``).

A layer on top of the generator's output, never part of the simulation: it reads the MEDS dataset that
``synthesize`` wrote in the hospital's own codes and units, harmonizes each event with that hospital's own
site config (so the canonical values are exactly what the loader would see), and rewrites every event with
the code strings and units of the MIMIC-IV-MEDS or eICU-MEDS ETL. The hospital's YAML is replaced by the
shipped example config of that style (``site_configs/examples/``) with only its paths changed, so a test
of the synthetic hospital is a test of the shipped config. Code strings and item ids: see the comments in
the example configs, which say where each was looked up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from clin_jepa.config import load_site_config
from clin_jepa.data.concepts import from_canonical, load_concepts
from clin_jepa.data.harmonize import IGNORED, MAPPED, SPECIAL, STAY, CodeMapper, harmonize
from clin_jepa.data.meds import CODE, NAT, SUBJECT, TIME, VALUE, codes_path, read_shard, shard_paths
from clin_jepa.errors import ConfigError
from clin_jepa.io import atomic_write_text

EXAMPLES = Path(__file__).resolve().parents[3] / "site_configs" / "examples"


@dataclass(frozen=True)
class CodeStyle:
    """How one ETL writes the generator's concepts: ``codes[concept] = (code, unit of its values)``.

    ``old_lab`` (MIMIC-IV-MEDS before 0.1.0 wrote lab results as ``LAB//<itemid>//<unit>``, later as
    ``LAB//RESULT//<itemid>//<unit>``): odd subject ids get the older form, so configs must match both.
    """

    name: str
    config: str
    stay_start: str
    stay_end: str
    codes: dict[str, tuple[str, str | None]]
    timed_other: str  # prefix for the generator's ignored, timed codes (administrative events)
    static_other: str  # prefix for its static codes (sex)
    unmapped: str  # template for codes the shipped config leaves unmapped
    old_lab: bool = False


MIMIC = CodeStyle(
    "mimic-iv-meds", "mimic_iv_meds.yaml", "ICU_ADMISSION//Medical Intensive Care Unit (MICU)",
    "ICU_DISCHARGE//Medical Intensive Care Unit (MICU)",
    {"heart_rate": ("LAB//220045//bpm", "bpm"), "sbp": ("LAB//220179//mmHg", "mmHg"),
     "map": ("LAB//220181//mmHg", "mmHg"), "resp_rate": ("LAB//220210//insp/min", "/min"),
     "spo2": ("LAB//220277//%", "%"), "temperature": ("LAB//223761//°F", "[degF]"),
     "creatinine": ("LAB//RESULT//50912//mg/dL", "mg/dL"), "bun": ("LAB//RESULT//51006//mg/dL", "mg/dL"),
     "sodium": ("LAB//RESULT//50983//mEq/L", "mmol/L"), "potassium": ("LAB//RESULT//50971//mEq/L", "mmol/L"),
     "bicarbonate": ("LAB//RESULT//50882//mEq/L", "mmol/L"),
     "lactate": ("LAB//RESULT//50813//mmol/L", "mmol/L"), "hemoglobin": ("LAB//RESULT//51222//g/dL", "g/dL"),
     "wbc": ("LAB//RESULT//51301//K/uL", "10*3/uL"), "platelets": ("LAB//RESULT//51265//K/uL", "10*3/uL"),
     "glucose": ("LAB//RESULT//50931//mg/dL", "mg/dL"),
     "vasopressor": ("INFUSION_START//221906", None), "iv_fluids": ("INFUSION_START//225158", None),
     "mechanical_ventilation": ("PROCEDURE//START//225792", None),
     "antibiotics": ("INFUSION_START//225798", None), "insulin": ("INFUSION_START//223258", None),
     "diuretic": ("INFUSION_START//221794", None)},
    "HOSPITAL_ADMISSION//", "GENDER//", "LAB//RESULT//SYNTH-{}//UNK", old_lab=True)

EICU = CodeStyle(
    "eicu-meds", "eicu_meds.yaml", "ICU_ADMISSION//Emergency Department//admit",
    "ICU_DISCHARGE//Alive//Floor",
    {"heart_rate": ("VITALS//PERIODIC//HEARTRATE", "bpm"), "sbp": ("VITALS//PERIODIC//BP//SYSTEMIC_SYSTOLIC",
                                                                   "mmHg"),
     "map": ("VITALS//PERIODIC//BP//SYSTEMIC_MEAN", "mmHg"), "resp_rate": ("VITALS//PERIODIC//RESPIRATION",
                                                                           "/min"),
     "spo2": ("VITALS//PERIODIC//SAO2", "%"), "temperature": ("VITALS//PERIODIC//TEMPERATURE", "Cel"),
     "creatinine": ("LAB//creatinine//mg/dL", "mg/dL"), "bun": ("LAB//BUN//mg/dL", "mg/dL"),
     "sodium": ("LAB//sodium//mmol/L", "mmol/L"), "potassium": ("LAB//potassium//mmol/L", "mmol/L"),
     "bicarbonate": ("LAB//bicarbonate//mmol/L", "mmol/L"), "lactate": ("LAB//lactate//mmol/L", "mmol/L"),
     "hemoglobin": ("LAB//Hgb//g/dL", "g/dL"), "wbc": ("LAB//WBC x 1000//K/mcL", "10*3/uL"),
     "platelets": ("LAB//platelets x 1000//K/mcL", "10*3/uL"), "glucose": ("LAB//glucose//mg/dL", "mg/dL"),
     "vasopressor": ("MEDICATION//STARTED//NOREPINEPHRINE 4 MG/250 ML NS", None),
     "iv_fluids": ("MEDICATION//STARTED//SODIUM CHLORIDE 0.9 % IV SOLN", None),
     "mechanical_ventilation": ("TREATMENT//ENTERED//pulmonary|ventilation and oxygenation|mechanical "
                                "ventilation", None),
     "antibiotics": ("MEDICATION//STARTED//VANCOMYCIN HCL 1000 MG IV SOLR", None),
     "insulin": ("MEDICATION//STARTED//INSULIN REGULAR HUMAN 100 UNIT/ML IJ SOLN", None),
     "diuretic": ("MEDICATION//STARTED//FUROSEMIDE 10 MG/ML IJ SOLN", None)},
    "HOSPITAL_ADMISSION//", "GENDER//", "LAB//SYNTH-{}//UNK")

STYLES = {s.name: s for s in (MIMIC, EICU)}


def _target_codes(style: CodeStyle, codes: list[str], mapper: CodeMapper,
                  static: np.ndarray) -> tuple[list[str], np.ndarray, list[str | None]]:
    """Per distinct code: the style's code, its concept index (-1 none) and the style's unit."""
    names = load_concepts().names
    out, concept, unit = [], np.full(len(codes), -1, np.int64), []
    for i, code in enumerate(codes):
        cat, c, _, _, is_start, _ = mapper.decide(code)
        u = None
        if cat == STAY:
            new = style.stay_start if is_start else style.stay_end
        elif cat == SPECIAL:
            new = code
        elif cat == MAPPED:
            new, u = style.codes[names[c]]
            concept[i] = c
        elif cat == IGNORED:
            new = (style.static_other if static[i] else style.timed_other) + code.replace("//", "_")
        else:
            new = style.unmapped.format(code.replace("//", "_"))
        out.append(new)
        unit.append(u)
    return out, concept, unit


def recode_site(root: Path, config: Path, style_name: str) -> Path:
    """Rewrite the synthetic MEDS dataset at ``root`` (coded as ``config`` says) in ``style_name``'s codes
    and units, and replace ``config`` with the shipped example config of that style; returns ``config``."""
    style = STYLES.get(style_name)
    if style is None:
        raise ConfigError(f"--code-style: {style_name!r} is not one of {sorted(STYLES)}")
    shipped_path = EXAMPLES / style.config
    if not shipped_path.is_file():
        raise ConfigError(f"--code-style {style_name}: {shipped_path} not found; the recoded hospital takes "
                          "the repository's shipped config (run from a source checkout)")
    cfg = load_site_config(config)
    mapper = CodeMapper(cfg)
    names = load_concepts().names
    all_codes: set[str] = set()
    for path in shard_paths(root):
        h = harmonize(read_shard(path), mapper)
        s = h.shard
        static = np.zeros(len(s.codes), bool)
        static[np.unique(s.code_index[s.time == NAT])] = True
        codes, concept, unit = _target_codes(style, s.codes, mapper, static)
        value = s.value.copy()
        for i in np.flatnonzero(concept >= 0):
            rows = s.code_index == i
            value[rows] = (from_canonical(h.value[rows], names[concept[i]], unit[i]) if unit[i]
                           else np.nan)
        code = np.array(codes, dtype=object)[s.code_index]
        if style.old_lab:  # the older MIMIC-IV-MEDS lab form for odd subject ids
            old = (s.subject % 2 == 1) & np.char.startswith(code.astype(str), "LAB//RESULT//")
            code[old] = np.char.replace(code[old].astype(str), "LAB//RESULT//", "LAB//", count=1)
        all_codes.update(code.tolist())
        times = pa.array(np.where(s.time == NAT, 0, s.time), pa.int64(), mask=s.time == NAT).cast(
            pa.timestamp("us"))
        table = pa.table({SUBJECT: pa.array(s.subject, pa.int64()), TIME: times,
                          CODE: pa.array(code.tolist(), pa.string()),
                          VALUE: pa.array(value.astype(np.float32), pa.float32(), mask=np.isnan(value))})
        pq.write_table(table, path)
    ordered = sorted(all_codes)
    pq.write_table(pa.table({"code": pa.array(ordered, pa.string()),
                             "description": pa.array([None] * len(ordered), pa.string()),
                             "parent_codes": pa.array([None] * len(ordered), pa.list_(pa.string()))}),
                   codes_path(root))
    shipped = yaml.safe_load(shipped_path.read_text())
    shipped["site"] = cfg.site
    shipped["data"] = {"path": str(Path(root).resolve())}
    shipped["state_dir"] = str(cfg.state_dir)
    header = (f"# Synthetic {cfg.site} coded as {style.name}: site_configs/examples/{style.config} with "
              "only site, data.path and state_dir changed (written by `clin-jepa synth --code-style`).\n")
    body = yaml.safe_dump(shipped, sort_keys=False, width=110, allow_unicode=True)
    atomic_write_text(config, header + body)
    return config
