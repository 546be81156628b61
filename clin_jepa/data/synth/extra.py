"""Opt-in extra concepts (``clin-jepa synth --extra-concepts``): the catalog's eight newer measurements.

Diastolic BP, GCS total, FiO2, urine output, bilirubin, INR, albumin and pH are read off the same hidden
course as the sixteen core measurements (organ-system state, true vitals, treatments), so they carry the
same information a real chart would: a failing circulation lowers the diastolic pressure and the urine
output, a ventilated patient gets a high FiO2 and a sedated GCS, sepsis raises bilirubin and INR and
lowers albumin, acidosis lowers the pH. They are drawn from their own random stream *after* the core
simulation and written after every core event, so a run without the option writes exactly the files it
wrote before the option existed (``tests/test_synth_extra.py`` pins a digest).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from clin_jepa.data.synth.physiology import HOURS, MEASUREMENTS, SYSTEMS, TREATMENTS, Course
from clin_jepa.data.synth.profiles import Coding, HospitalProfile

EXTRA_MEASUREMENTS = ("dbp", "gcs_total", "fio2", "urine_output", "bilirubin", "inr", "albumin", "ph")
I_, C_, R_, P_, M_, B_, F_ = range(len(SYSTEMS))
VENT, DIURETIC = TREATMENTS.index("mechanical_ventilation"), TREATMENTS.index("diuretic")
# (probability a lab draw includes the test): liver panel and coagulation about daily, gases when needed
_LAB_TAKEN = {"bilirubin": 0.3, "inr": 0.35, "albumin": 0.3}
_BILIRUBIN_UMOL_PER_MG_DL = 10_000 / 584.66  # the catalog's molar mass: what the units library inverts


@dataclass(frozen=True)
class ExtraObservations:
    """Recorded extra events: ``stay`` and ``hour`` as in ``Observations``, ``concept`` indexes
    ``EXTRA_MEASUREMENTS``, ``value`` canonical."""

    stay: np.ndarray
    hour: np.ndarray
    concept: np.ndarray
    value: np.ndarray


def _at(course: Course, stay: np.ndarray, hour: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent state (rows, systems), treatments (rows, treatments) and hour index of each event."""
    h = np.minimum(hour.astype(int), HOURS - 1)
    return course.state[stay, h].astype(np.float64), course.treat[stay, h], h


def _schedule(rng: np.random.Generator, course: Course, every_h: int, prob: float) -> tuple:
    """Whole-hour charting times every ``every_h`` hours (each kept with ``prob``) inside each stay."""
    n = len(course.end)
    phase = rng.integers(0, every_h, n)
    hours = np.arange(HOURS)
    due = ((hours[None, :] - phase[:, None]) % every_h == 0) & (rng.random((n, HOURS)) < prob)
    stay, hour = np.nonzero(due)
    t = hour + rng.uniform(0.0, 1.0, hour.shape)
    keep = t < course.end[stay]
    return stay[keep], t[keep]


def extra_observations(rng: np.random.Generator, course: Course, core_stay: np.ndarray,
                       core_hour: np.ndarray, core_concept: np.ndarray,
                       lab_draws: tuple[np.ndarray, np.ndarray]) -> ExtraObservations:
    """Chart the extra concepts of ``course``: DBP beside every charted SBP, GCS every 4 h, FiO2 every 2 h
    (hourly on the ventilator), urine output hourly, labs at the core lab draws, pH in blood gases."""
    n = len(course.end)
    personal = {"bilirubin": np.exp(rng.normal(np.log(0.6), 0.35, n)),
                "inr": rng.normal(1.05, 0.07, n), "albumin": rng.normal(3.8, 0.35, n),
                "urine": np.exp(rng.normal(np.log(75.0), 0.3, n)), "pulse_pressure": rng.normal(0.0, 3.0, n)}
    parts: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []

    def add(name: str, stay: np.ndarray, t: np.ndarray, value: np.ndarray) -> None:
        parts.append((stay, t, EXTRA_MEASUREMENTS.index(name), value))

    sbp = np.flatnonzero(core_concept == MEASUREMENTS.index("sbp"))  # the cuff gives both pressures
    s, t = core_stay[sbp], core_hour[sbp]
    h = np.minimum(t.astype(int), HOURS - 1)
    true_map, true_sbp = course.truth["map"][s, h], course.truth["sbp"][s, h]
    add("dbp", s, t, np.clip((3.0 * true_map - true_sbp) / 2.0 + personal["pulse_pressure"][s]
                             + rng.normal(0.0, 3.0, len(s)), 15.0, 150.0))

    s, t = _schedule(rng, course, 4, 0.9)
    x, u, _ = _at(course, s, t)
    sedated = u[:, VENT] & (rng.random(len(s)) < 0.8)
    gcs = 15.0 - 2.5 * x[:, C_] - 2.0 * x[:, M_] - 1.5 * x[:, P_] - 1.0 * x[:, I_] - 6.0 * sedated
    add("gcs_total", s, t, np.clip(np.round(gcs + rng.normal(0.0, 0.7, len(s))), 3.0, 15.0))

    s, t = _schedule(rng, course, 1, 1.0)
    x, u, _ = _at(course, s, t)
    vent = u[:, VENT]
    charted = vent | ((x[:, P_] > 0.2) & (np.fmod(t, 2.0) < 1.0))  # supplemental O2 charted every 2 h
    fio2 = np.where(vent, 35.0 + 55.0 * x[:, P_], 21.0 + 25.0 * x[:, P_]) + rng.normal(0.0, 3.0, len(s))
    add("fio2", s[charted], t[charted], np.clip(np.round(fio2[charted] / 5.0) * 5.0, 21.0, 100.0))

    x, u, _ = _at(course, s, t)  # hourly urine output from the same hourly grid
    flow = (personal["urine"][s] / (1.0 + 2.5 * x[:, R_]) * (1.0 - 0.5 * np.minimum(x[:, C_], 1.0))
            + 80.0 * u[:, DIURETIC]) * np.exp(rng.normal(0.0, 0.3, len(s)))
    taken = rng.random(len(s)) < 0.85
    add("urine_output", s[taken], t[taken], np.round(np.maximum(flow[taken], 0.0)))

    draw_stay, draw_t = lab_draws
    x, u, _ = _at(course, draw_stay, draw_t)
    lab = {"bilirubin": personal["bilirubin"][draw_stay] * (1.0 + 1.5 * x[:, I_] + 1.2 * x[:, C_])
           * np.exp(rng.normal(0.0, 0.08, len(draw_stay))),
           "inr": personal["inr"][draw_stay] + 0.5 * x[:, I_] + 0.6 * x[:, B_] + 0.3 * x[:, C_]
           + rng.normal(0.0, 0.05, len(draw_stay)),
           "albumin": personal["albumin"][draw_stay] - 0.7 * x[:, I_] - 0.4 * x[:, F_] - 0.5 * x[:, B_]
           + rng.normal(0.0, 0.1, len(draw_stay))}
    limits = {"bilirubin": (0.1, 40.0), "inr": (0.8, 8.0), "albumin": (1.0, 5.5)}
    for name, value in lab.items():
        taken = rng.random(len(draw_stay)) < _LAB_TAKEN[name]
        add(name, draw_stay[taken], draw_t[taken], np.clip(value[taken], *limits[name]))
    # blood gases: mostly for ventilated or acidotic patients
    gas = rng.random(len(draw_stay)) < np.where(u[:, VENT] | (x[:, M_] > 0.3), 0.9, 0.15)
    ph = 7.41 - 0.12 * x[:, M_] - 0.04 * x[:, P_] * (1.0 - 0.6 * u[:, VENT]) + rng.normal(0.0, 0.02,
                                                                                              len(draw_stay))
    add("ph", draw_stay[gas], draw_t[gas], np.clip(ph[gas], 6.8, 7.7))

    return ExtraObservations(stay=np.concatenate([p[0] for p in parts]).astype(np.int64),
                             hour=np.concatenate([p[1] for p in parts]),
                             concept=np.concatenate([np.full(len(p[0]), p[2], np.int16) for p in parts]),
                             value=np.concatenate([np.asarray(p[3], np.float64) for p in parts]))


_EXTRA_CODINGS = {  # per base site: its codes and units for the extra concepts
    "hospital_a": {
        "dbp": Coding(("LOINC//8462-4",), "mmHg", decimals=0, description="Diastolic blood pressure"),
        "gcs_total": Coding(("LOINC//9269-2",), "{score}", decimals=0, description="Glasgow coma score"),
        "fio2": Coding(("LOINC//3150-0",), "%", decimals=0, description="Inhaled oxygen concentration"),
        "urine_output": Coding(("LOINC//9187-6",), "mL/h", decimals=0, description="Urine output"),
        "bilirubin": Coding(("LOINC//1975-2",), "mg/dL", decimals=1, description="Bilirubin, total"),
        "inr": Coding(("LOINC//6301-6",), "{INR}", decimals=2, description="INR"),
        "albumin": Coding(("LOINC//1751-7",), "g/dL", decimals=1, description="Albumin, serum"),
        "ph": Coding(("LOINC//2744-1",), "[pH]", decimals=2, description="pH, arterial blood"),
    },
    "hospital_b": {  # FiO2 as a fraction, hourly urine volumes declared with scale 1
        "dbp": Coding(("ITEM//220180",), "mmHg", decimals=0, description="NIBP diastolic"),
        "gcs_total": Coding(("ITEM//198",), "points", decimals=0, description="GCS total"),
        "fio2": Coding(("ITEM//223835",), "fraction", scale=0.01, decimals=2,
                       description="Inspired O2 fraction"),
        "urine_output": Coding(("ITEM//226559",), "mL", decimals=0, declared=True,
                               description="Foley urine volume"),
        "bilirubin": Coding(("ITEM//50885",), "mg/dL", decimals=1, description="Bilirubin"),
        "inr": Coding(("ITEM//51237",), "ratio", decimals=1, description="INR(PT)"),
        "albumin": Coding(("ITEM//50862",), "g/dL", decimals=1, description="Albumin"),
        "ph": Coding(("ITEM//50820",), "pH", decimals=2, description="pH"),
    },
    "hospital_c": {  # SI units
        "dbp": Coding(("VITALS//RR_DIA",), "mmHg", decimals=0, description="Diastolischer Blutdruck"),
        "gcs_total": Coding(("SCORE//GCS",), "{score}", decimals=0, description="Glasgow Coma Scale"),
        "fio2": Coding(("BEATMUNG//FIO2",), "%", decimals=0, description="Inspiratorische O2-Fraktion"),
        "urine_output": Coding(("BILANZ//URIN",), "mL/h", decimals=0, description="Urinausscheidung"),
        "bilirubin": Coding(("LABOR//BILIRUBIN",), "umol/L", scale=_BILIRUBIN_UMOL_PER_MG_DL, decimals=0,
                            description="Bilirubin gesamt"),
        "inr": Coding(("LABOR//INR",), "{INR}", decimals=2, description="INR"),
        "albumin": Coding(("LABOR//ALBUMIN",), "g/L", scale=10.0, decimals=0, description="Albumin"),
        "ph": Coding(("BGA//PH",), "[pH]", decimals=2, description="pH (Blutgasanalyse)"),
    },
}


def with_extra_codings(profile: HospitalProfile, base_site: str) -> HospitalProfile:
    """``profile`` that also codes the extra concepts as its base site does. Where an unmapped test of the
    profile now is a simulated concept (bilirubin at hospital_a, bilirubin and INR at hospital_b), the
    writer stops writing the unmapped one (``meds_writer``)."""
    return replace(profile, codings={**profile.codings, **_EXTRA_CODINGS[base_site]})
