"""Hospital profiles: what makes each synthetic hospital different from the others.

A profile fixes everything a site decides for itself — its case mix and population, the codes it writes
(LOINC at one site, local item ids at another, home-grown strings at the third), the units it records in,
how often it samples vitals and labs and what it tends to leave unmeasured, and which administrative or
unmapped codes show up in its extract. The physiology is shared: all hospitals treat the same kind of
patients, they only see and record them differently. The profile also renders the site config YAML that
maps its codes and units back to the canonical concepts, so data and config cannot drift apart.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace

import yaml

from clin_jepa.data.synth.physiology import COHORTS, MEASUREMENTS, TREATMENTS, CaseMix


@dataclass(frozen=True)
class Coding:
    """How a site records one canonical concept.

    ``codes`` are the local codes written to MEDS (several for a treatment class such as antibiotics; the
    config then maps them with ``regex``). The site value is ``canonical * scale + offset`` rounded to
    ``decimals``; ``unit`` is what the site config declares, so the loader's conversion must invert it.
    """

    codes: tuple[str, ...]
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    decimals: int = 1
    regex: str | None = None
    description: str = ""
    declared: bool = False  # the site config declares scale/offset (a unit no library converts)


@dataclass(frozen=True)
class Sampling:
    """When the site measures: vitals every ``vital_every_h`` hours (each kept with ``vital_prob``), lab
    draws every ``lab_every_h`` hours (halved for unstable patients), and a per-concept probability that a
    scheduled measurement is simply not taken."""

    vital_every_h: int
    vital_prob: float
    lab_every_h: float
    skip: dict[str, float]


@dataclass(frozen=True)
class HospitalProfile:
    site: str
    description: str
    mix: CaseMix
    sampling: Sampling
    codings: dict[str, Coding]
    icu_admit_codes: tuple[str, ...]
    icu_discharge_code: str
    icu_start_regex: str
    sex_codes: tuple[str, str]  # (female, male), written as static events (null time)
    admission_codes: tuple[str, ...]  # administrative events before the ICU stay; ignored by the config
    ignore_codes: tuple[str, ...]
    unmapped_labs: tuple[tuple[str, float, str], ...]  # (code, typical value, description); never mapped
    unmapped_prob: float  # chance that a lab draw also orders each unmapped test
    subject_id_base: int

    def site_config(self, data_path: str, state_dir: str) -> dict:
        """The site config mapping, with paths as given (relative to where the YAML file will live)."""
        code_map = []
        extra = [k for k in self.codings if k not in MEASUREMENTS and k not in TREATMENTS]  # synth/extra.py
        for concept in (*MEASUREMENTS, *extra, *TREATMENTS):
            c = self.codings[concept]
            entry: dict[str, str | float] = {"regex": c.regex} if c.regex else {"code": c.codes[0]}
            entry["concept"] = concept
            if c.unit is not None:
                entry["unit"] = c.unit
            if c.declared:  # the inverse of how the site value was written
                entry["scale"] = 1.0 / c.scale
                if c.offset:
                    entry["offset"] = -c.offset / c.scale
            code_map.append(entry)
        return {
            "site": self.site,
            "data": {"path": data_path},
            "icu_stay": {"start": self.icu_start_regex, "end": self.icu_discharge_code},
            "code_map": code_map,
            "ignore_codes": list(self.ignore_codes),
            "max_unmapped_share": 0.05,
            "training": {"batch_size": 32, "device": "cpu"},
            "state_dir": state_dir,
            "privacy": {"enabled": False, "target_epsilon": 8.0, "delta": 1.0e-5, "max_grad_norm": 1.0,
                        "noise_multiplier": None},
        }

    def site_config_yaml(self, data_path: str, state_dir: str) -> str:
        header = (f"# Synthetic {self.site}: {self.description}.\n"
                  "# Written by `clin-jepa synth` (clin_jepa/data/synth/profiles.py); paths are relative to "
                  "this file.\n")
        body = yaml.safe_dump(self.site_config(data_path, state_dir), sort_keys=False, width=110)
        return header + body


def _vitals(codes: dict[str, str], temp_unit: str) -> dict[str, Coding]:
    fahrenheit = temp_unit == "degF"
    return {
        "heart_rate": Coding((codes["heart_rate"],), "bpm", decimals=0, description="Heart rate"),
        "sbp": Coding((codes["sbp"],), "mmHg", decimals=0, description="Systolic blood pressure"),
        "map": Coding((codes["map"],), "mmHg", decimals=0, description="Mean arterial pressure"),
        "resp_rate": Coding((codes["resp_rate"],), "/min", decimals=0, description="Respiratory rate"),
        "spo2": Coding((codes["spo2"],), "%", decimals=0, description="Oxygen saturation (pulse oximetry)"),
        "temperature": Coding((codes["temperature"],), temp_unit, scale=1.8 if fahrenheit else 1.0,
                              offset=32.0 if fahrenheit else 0.0, decimals=1, description="Body temperature"),
    }


def _treatments(codes: dict[str, tuple[str, ...]], abx_regex: str) -> dict[str, Coding]:
    names = {"vasopressor": "Norepinephrine infusion", "iv_fluids": "Crystalloid bolus",
             "mechanical_ventilation": "Invasive mechanical ventilation", "antibiotics": "Antibiotic dose",
             "insulin": "Insulin infusion", "diuretic": "Loop diuretic"}
    return {t: Coding(codes[t], None, regex=abx_regex if t == "antibiotics" else None, description=names[t])
            for t in TREATMENTS}


_HOSPITAL_A = HospitalProfile(
    site="hospital_a",
    description="academic medical ICU, LOINC/RxNorm codes, US units except temperature",
    mix=CaseMix(shares={"stable": 0.50, "sepsis": 0.22, "aki": 0.10, "respiratory_failure": 0.10,
                        "hemorrhage": 0.08}, age_mean=62.0, ckd=0.14, diabetes=0.22),
    sampling=Sampling(vital_every_h=1, vital_prob=0.95, lab_every_h=6.0,
                      skip={"lactate": 0.45, "bun": 0.05, "glucose": 0.0}),
    codings={
        **_vitals({"heart_rate": "LOINC//8867-4", "sbp": "LOINC//8480-6", "map": "LOINC//8478-0",
                   "resp_rate": "LOINC//9279-1", "spo2": "LOINC//59408-5", "temperature": "LOINC//8310-5"},
                  "degC"),
        "creatinine": Coding(("LOINC//2160-0",), "mg/dL", decimals=2, description="Creatinine, serum"),
        "bun": Coding(("LOINC//3094-0",), "mg/dL", decimals=0, description="Urea nitrogen, serum"),
        "sodium": Coding(("LOINC//2951-2",), "mmol/L", decimals=0, description="Sodium, serum"),
        "potassium": Coding(("LOINC//2823-3",), "mmol/L", decimals=1, description="Potassium, serum"),
        "bicarbonate": Coding(("LOINC//1963-8",), "mmol/L", decimals=0, description="Bicarbonate, serum"),
        "lactate": Coding(("LOINC//2524-7",), "mmol/L", decimals=1, description="Lactate, blood"),
        "hemoglobin": Coding(("LOINC//718-7",), "g/dL", decimals=1, description="Hemoglobin, blood"),
        "wbc": Coding(("LOINC//6690-2",), "10^3/uL", decimals=1, description="Leukocytes, blood"),
        "platelets": Coding(("LOINC//777-3",), "10^3/uL", decimals=0, description="Platelets, blood"),
        "glucose": Coding(("LOINC//2345-7",), "mg/dL", decimals=0, description="Glucose, serum"),
        **_treatments({"vasopressor": ("RXNORM//7512",), "iv_fluids": ("RXNORM//9863",),
                       "mechanical_ventilation": ("ICD10PCS//5A1955Z",),
                       "antibiotics": ("RXNORM//2193", "RXNORM//11124", "RXNORM//29561"),
                       "insulin": ("RXNORM//5856",), "diuretic": ("RXNORM//4603",)},
                      r"RXNORM//(2193|11124|29561)"),
    },
    icu_admit_codes=("ICU//ADMIT//MICU", "ICU//ADMIT//SICU"),
    icu_discharge_code="ICU//DISCHARGE",
    icu_start_regex=r"ICU//ADMIT//.*",
    sex_codes=("GENDER//F", "GENDER//M"),
    admission_codes=("ADMIN//HOSPITAL_ADMISSION//EMERGENCY", "ADMIN//INSURANCE//MEDICARE"),
    ignore_codes=(r"GENDER//.*", r"ADMIN//.*"),
    unmapped_labs=(("LOINC//6598-7", 0.02, "Troponin T"), ("LOINC//1975-2", 0.8, "Bilirubin, total")),
    unmapped_prob=0.15,
    subject_id_base=10_000_000,
)

_HOSPITAL_B = HospitalProfile(
    site="hospital_b",
    description="community ICU, local item ids, creatinine in umol/L, temperature in degF, lactate in mg/dL",
    mix=CaseMix(shares={"stable": 0.46, "sepsis": 0.14, "aki": 0.22, "respiratory_failure": 0.08,
                        "hemorrhage": 0.10}, age_mean=66.0, ckd=0.16, diabetes=0.30),
    sampling=Sampling(vital_every_h=1, vital_prob=0.85, lab_every_h=8.0,
                      skip={"lactate": 0.7, "bun": 0.0, "glucose": 0.05}),
    codings={
        **_vitals({"heart_rate": "ITEM//220045", "sbp": "ITEM//220179", "map": "ITEM//220181",
                   "resp_rate": "ITEM//220210", "spo2": "ITEM//220277", "temperature": "ITEM//223761"},
                  "degF"),
        "creatinine": Coding(("ITEM//50912",), "umol/L", scale=88.42, decimals=0, description="Creatinine"),
        "bun": Coding(("ITEM//51006",), "mg/dL", decimals=0, description="Urea nitrogen"),
        "sodium": Coding(("ITEM//50983",), "mEq/L", decimals=0, description="Sodium"),
        "potassium": Coding(("ITEM//50971",), "mEq/L", decimals=1, description="Potassium"),
        "bicarbonate": Coding(("ITEM//50882",), "mEq/L", decimals=0, description="Bicarbonate"),
        "lactate": Coding(("ITEM//50813",), "mg/dL", scale=9.01, decimals=0, description="Lactate"),
        "hemoglobin": Coding(("ITEM//51222",), "g/dL", decimals=1, description="Hemoglobin"),
        "wbc": Coding(("ITEM//51301",), "10^9/L", decimals=1, description="White blood cells"),
        "platelets": Coding(("ITEM//51265",), "10^9/L", decimals=0, description="Platelet count"),
        "glucose": Coding(("ITEM//50931",), "mg/dL", decimals=0, description="Glucose"),
        **_treatments({"vasopressor": ("ITEM//221906",), "iv_fluids": ("ITEM//225158",),
                       "mechanical_ventilation": ("ITEM//225792",),
                       "antibiotics": ("ITEM//225798", "ITEM//225893", "ITEM//225883"),
                       "insulin": ("ITEM//223258",), "diuretic": ("ITEM//221794",)},
                      r"ITEM//(225798|225893|225883)"),
    },
    icu_admit_codes=("TRANSFER//ICU_IN//CCU", "TRANSFER//ICU_IN//MICU"),
    icu_discharge_code="TRANSFER//ICU_OUT",
    icu_start_regex=r"TRANSFER//ICU_IN//.*",
    sex_codes=("SEX//F", "SEX//M"),
    admission_codes=("ADMISSION//URGENT", "TRANSFER//WARD_IN"),
    ignore_codes=(r"SEX//.*", r"ADMISSION//.*", r"TRANSFER//WARD.*"),
    unmapped_labs=(("ITEM//50885", 0.8, "Bilirubin"), ("ITEM//51237", 1.2, "INR(PT)")),
    unmapped_prob=0.2,
    subject_id_base=20_000_000,
)

_HOSPITAL_C = HospitalProfile(
    site="hospital_c",
    description="surgical ICU with its own code strings, SI units (umol/L, mmol/L, g/L), vitals every 2 h",
    mix=CaseMix(shares={"stable": 0.44, "sepsis": 0.14, "aki": 0.10, "respiratory_failure": 0.17,
                        "hemorrhage": 0.15}, age_mean=67.0, ckd=0.12, diabetes=0.18),
    sampling=Sampling(vital_every_h=2, vital_prob=0.92, lab_every_h=5.0,
                      skip={"lactate": 0.3, "bun": 0.25, "glucose": 0.0}),
    codings={
        **_vitals({"heart_rate": "VITALS//HF", "sbp": "VITALS//RR_SYS", "map": "VITALS//RR_MITTEL",
                   "resp_rate": "VITALS//AF", "spo2": "VITALS//SPO2", "temperature": "VITALS//TEMP"},
                  "degC"),
        "creatinine": Coding(("LABOR//KREATININ",), "umol/L", scale=88.42, decimals=0,
                             description="Kreatinin"),
        "bun": Coding(("LABOR//HARNSTOFF",), "mmol/L", scale=1 / 2.8, decimals=1, description="Harnstoff"),
        "sodium": Coding(("LABOR//NATRIUM",), "mmol/L", decimals=0, description="Natrium"),
        "potassium": Coding(("LABOR//KALIUM",), "mmol/L", decimals=1, description="Kalium"),
        "bicarbonate": Coding(("LABOR//BIKARBONAT",), "mmol/L", decimals=1, description="Bikarbonat"),
        "lactate": Coding(("LABOR//LAKTAT",), "mmol/L", decimals=1, description="Laktat"),
        "hemoglobin": Coding(("LABOR//HAEMOGLOBIN",), "g/L", scale=10.0, decimals=0,
                             description="Haemoglobin"),
        "wbc": Coding(("LABOR//LEUKOZYTEN",), "10^9/L", decimals=1, description="Leukozyten"),
        "platelets": Coding(("LABOR//THROMBOZYTEN",), "10^9/L", decimals=0, description="Thrombozyten"),
        "glucose": Coding(("LABOR//GLUKOSE",), "mmol/L", scale=1 / 18.016, decimals=1, description="Glukose"),
        **_treatments({"vasopressor": ("MEDIKATION//NORADRENALIN",), "iv_fluids": ("MEDIKATION//RINGER",),
                       "mechanical_ventilation": ("BEATMUNG//INVASIV",),
                       "antibiotics": ("MEDIKATION//ANTIBIOTIKUM//MEROPENEM",
                                       "MEDIKATION//ANTIBIOTIKUM//PIPERACILLIN"),
                       "insulin": ("MEDIKATION//INSULIN",), "diuretic": ("MEDIKATION//FUROSEMID",)},
                      r"MEDIKATION//ANTIBIOTIKUM//.*"),
    },
    icu_admit_codes=("STATION//ITS//AUFNAHME",),
    icu_discharge_code="STATION//ITS//ENTLASSUNG",
    icu_start_regex=r"STATION//ITS//AUFNAHME",
    sex_codes=("GESCHLECHT//W", "GESCHLECHT//M"),
    admission_codes=("VERWALTUNG//AUFNAHME", "VERWALTUNG//OP_SAAL"),
    ignore_codes=(r"GESCHLECHT//.*", r"VERWALTUNG//.*"),
    unmapped_labs=(("LABOR//CRP", 40.0, "C-reaktives Protein"), ("LABOR//PCT", 0.5, "Procalcitonin")),
    unmapped_prob=0.15,
    subject_id_base=30_000_000,
)

BASE_PROFILES: tuple[HospitalProfile, ...] = (_HOSPITAL_A, _HOSPITAL_B, _HOSPITAL_C)
MAX_SITES = 26


def site_name(index: int) -> str:
    return f"hospital_{string.ascii_lowercase[index]}"


def hospital_profiles(n_sites: int) -> tuple[HospitalProfile, ...]:
    """The first ``n_sites`` hospitals: a, b, c as shipped, then variants that reuse a base site's coding
    with a rotated case mix, so any number of sites up to 26 stays heterogeneous."""
    profiles = []
    for i in range(n_sites):
        base = BASE_PROFILES[i % len(BASE_PROFILES)]
        if i < len(BASE_PROFILES):
            profiles.append(base)
            continue
        shift = i // len(BASE_PROFILES)
        sick = [c for c in COHORTS if c != "stable"]
        rotated = {sick[(j + shift) % len(sick)]: base.mix.shares[c] for j, c in enumerate(sick)}
        mix = replace(base.mix, shares={"stable": base.mix.shares["stable"], **rotated})
        profiles.append(replace(base, site=site_name(i), mix=mix, subject_id_base=(i + 1) * 10_000_000,
                                description=f"variant of {base.site} with a rotated case mix"))
    return tuple(profiles)
