"""What a hospital records of a simulated course: sampled, noisy measurements and charted treatments.

The schedule is the hospital's (vitals every hour or two, lab draws every few hours, some tests often
skipped) but it also follows the patient: unstable patients get their labs drawn twice as often and
lactate mostly when they are sick, so missingness carries information as it does in real ICUs.
Values stay in canonical units here; a site's codes and units are applied when writing MEDS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clin_jepa.data.synth.physiology import HOURS, LABS, MEASUREMENTS, TREATMENTS, Course

# Measurement error in canonical units; ("rel", x) means a coefficient of variation.
_NOISE = {"heart_rate": 3.0, "sbp": 5.0, "map": 3.5, "resp_rate": 1.5, "spo2": 1.0, "temperature": 0.15,
          "creatinine": ("rel", 0.05), "bun": ("rel", 0.06), "sodium": 1.2, "potassium": 0.15,
          "bicarbonate": 1.0, "lactate": ("rel", 0.08), "hemoglobin": 0.4, "wbc": ("rel", 0.06),
          "platelets": ("rel", 0.06), "glucose": ("rel", 0.08)}
_LIMITS = {"spo2": (50.0, 100.0)}
# Vital groups charted together; temperature is taken less often than the monitor values.
_VITAL_GROUPS = ((("heart_rate", "spo2"), 1), (("sbp", "map"), 1), (("resp_rate",), 1), (("temperature",), 4))
N_CONCEPTS = len(MEASUREMENTS) + len(TREATMENTS)  # concept index: measurements, then treatments


@dataclass(frozen=True)
class Observations:
    """Recorded events of all stays, in no particular order.

    ``hour`` is the time since the stay's ICU admission (always inside the stay); ``concept`` indexes
    ``MEASUREMENTS + TREATMENTS``; ``value`` is canonical (NaN for treatments given without a dose).
    ``lab_draws`` lists (stay, hour) of every blood draw, where sites add their unmapped tests.
    """

    stay: np.ndarray
    hour: np.ndarray
    concept: np.ndarray
    value: np.ndarray
    lab_draws: tuple[np.ndarray, np.ndarray]


def _noisy(rng: np.random.Generator, concept: str, true: np.ndarray) -> np.ndarray:
    spec = _NOISE[concept]
    if isinstance(spec, tuple):
        out = true * np.exp(rng.normal(0.0, spec[1], true.shape))
    else:
        out = true + rng.normal(0.0, spec, true.shape)
    lo, hi = _LIMITS.get(concept, (0.0, np.inf))
    return np.clip(out, lo, hi)


def _inside(rng: np.random.Generator, course: Course, stay: np.ndarray, hour: np.ndarray) -> tuple:
    """Give whole-hour events a minute offset and drop those at or after the stay's end."""
    t = hour + rng.uniform(0.0, 1.0, hour.shape)
    keep = t < course.end[stay]
    return stay[keep], t[keep], hour[keep]


def _lab_draws(rng: np.random.Generator, course: Course, every_h: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(course.end)
    sev = course.severity()
    t = rng.uniform(0.2, 1.5, n)
    stays, hours = [], []
    while True:
        open_ = t < course.end
        if not open_.any():
            break
        stays.append(np.flatnonzero(open_))
        hours.append(t[open_])
        h = np.minimum(t.astype(int), HOURS - 1)
        sick = sev[np.arange(n), h] > 0.8
        t = t + every_h * rng.uniform(0.75, 1.25, n) * np.where(sick, 0.5, 1.0)
    return np.concatenate(stays), np.concatenate(hours)


def observe(rng: np.random.Generator, course: Course, vital_every_h: int, vital_prob: float,
            lab_every_h: float, skip: dict[str, float]) -> Observations:
    """Sample what the hospital charts of ``course``; see the module docstring."""
    n = len(course.end)
    sev = course.severity()
    parts: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []
    hours = np.arange(HOURS)
    for group, every in _VITAL_GROUPS:
        step = vital_every_h * every
        phase = rng.integers(0, step, n)
        prob = np.where(sev > 1.0, 1.0 - (1.0 - vital_prob) * 0.3, vital_prob)
        due = ((hours[None, :] - phase[:, None]) % step == 0) & (rng.random((n, HOURS)) < prob)
        stay, hour = np.nonzero(due)
        stay, t, hour = _inside(rng, course, stay, hour)
        for concept in group:
            value = _noisy(rng, concept, course.truth[concept][stay, hour])
            parts.append((stay, t, MEASUREMENTS.index(concept), value))

    draw_stay, draw_t = _lab_draws(rng, course, lab_every_h)
    draw_h = np.minimum(draw_t.astype(int), HOURS - 1)
    sick = sev[draw_stay, draw_h] > 0.8
    for concept in LABS:
        p_skip = skip.get(concept, 0.02)
        if concept == "lactate":  # ordered mostly for unstable patients
            p_skip = np.where(sick, p_skip * 0.2, p_skip)
        taken = rng.random(len(draw_stay)) >= p_skip
        s, h = draw_stay[taken], draw_h[taken]
        parts.append((s, draw_t[taken], MEASUREMENTS.index(concept),
                      _noisy(rng, concept, course.truth[concept][s, h])))

    parts.extend(_treatment_events(rng, course))
    stay = np.concatenate([p[0] for p in parts])
    return Observations(
        stay=stay.astype(np.int64),
        hour=np.concatenate([p[1] for p in parts]),
        concept=np.concatenate([np.full(len(p[0]), p[2], dtype=np.int16) for p in parts]),
        value=np.concatenate([np.asarray(p[3], dtype=np.float64) for p in parts]).astype(np.float32),
        lab_draws=(draw_stay, draw_t),
    )


def _treatment_events(rng: np.random.Generator, course: Course) -> list:
    """One charted event per hour a treatment runs, with a dose where the chart would have one."""
    out = []
    circ = course.state[:, :, 1]
    glucose = course.truth["glucose"]
    for k, name in enumerate(TREATMENTS):
        stay, hour = np.nonzero(course.treat[:, :, k])
        stay, t, hour = _inside(rng, course, stay, hour)
        if name == "vasopressor":  # mcg/kg/min, titrated to the shock
            dose = np.round(0.05 + 0.15 * circ[stay, hour] + rng.uniform(0.0, 0.05, len(stay)), 2)
        elif name == "iv_fluids":  # mL bolus
            dose = rng.choice([250.0, 500.0, 1000.0], len(stay))
        elif name == "insulin":  # units/h on a sliding scale
            dose = np.round(np.clip((glucose[stay, hour] - 110.0) / 30.0, 1.0, 12.0))
        elif name == "diuretic":  # mg furosemide
            dose = rng.choice([20.0, 40.0, 80.0], len(stay))
        else:
            dose = np.full(len(stay), np.nan)
        out.append((stay, t, len(MEASUREMENTS) + k, dose))
    return out
