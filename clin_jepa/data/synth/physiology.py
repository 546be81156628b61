"""Hidden physiology of ICU patients, simulated hour by hour for a whole hospital at once.

Each ICU stay carries seven latent organ-system variables (0 = healthy, about 1 = organ failure):
inflammation, circulatory failure, renal injury, respiratory failure, metabolic acidosis, blood loss and
fluid overload. A stay belongs to a cohort — stable, or one kind of deterioration (septic shock, acute
kidney injury, respiratory failure, hemorrhage) whose driver switches on at an onset hour, after a short
prodrome, for a limited episode. The systems are coupled (sepsis drags down the circulation, shock injures
the kidneys, everything failing acidifies the blood), clinicians respond to what they see with some
randomness, and the treatments act back on the latent state. Death is a hazard of the combined
dysfunction; stable enough patients leave the ICU after their planned stay.

Everything is an array over stays (and hours): one loop over the hours, vectorized across patients, so a
hospital of a thousand stays takes milliseconds. All randomness comes from the ``Generator`` handed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

HOURS = 168  # simulated horizon; stays still open then are discharged (transferred out) at this hour
COHORTS = ("stable", "sepsis", "aki", "respiratory_failure", "hemorrhage")
SYSTEMS = ("inflammation", "circulation", "renal", "respiratory", "acid_base", "blood_loss", "fluid")
TREATMENTS = ("vasopressor", "iv_fluids", "mechanical_ventilation", "antibiotics", "insulin", "diuretic")
MEASUREMENTS = ("heart_rate", "sbp", "map", "resp_rate", "spo2", "temperature", "creatinine", "bun",
                "sodium", "potassium", "bicarbonate", "lactate", "hemoglobin", "wbc", "platelets", "glucose")
VITALS = MEASUREMENTS[:6]
LABS = MEASUREMENTS[6:]

I_, C_, R_, P_, M_, B_, F_ = range(len(SYSTEMS))
_PRIMARY = {"sepsis": I_, "aki": R_, "respiratory_failure": P_, "hemorrhage": B_}
# How fast each system relaxes towards its target per hour: creatinine-driving renal injury is slow,
# circulation reacts within hours. Blood loss and fluid are stocks, integrated separately.
_RELAX = np.array([0.12, 0.35, 0.05, 0.15, 0.2, 0.0, 0.0])
_PROCESS_SD = np.array([0.02, 0.03, 0.01, 0.02, 0.02, 0.0, 0.0])
# Slow physiological wander of each measured value (canonical units), on top of the latent state.
# Additive wander in canonical units; lab values that vary in proportion to their level wander on a log
# scale. This within-patient variability is what keeps the tasks from being read off the last value.
_WANDER_SD = {"heart_rate": 5.0, "map": 4.0, "sbp": 5.0, "resp_rate": 1.5, "spo2": 0.6, "temperature": 0.2,
              "sodium": 1.8, "potassium": 0.2, "bicarbonate": 1.2, "glucose": 12.0, "hemoglobin": 0.8}
_FRAILTY_SHIFT = {"heart_rate": 6.0, "map": -4.0, "resp_rate": 1.5, "bicarbonate": -1.0, "hemoglobin": -0.5,
                  "sodium": -0.7, "spo2": -0.6}
_WANDER_LOG_SD = {"creatinine": 0.12, "bun": 0.1, "lactate": 0.15, "wbc": 0.15, "platelets": 0.15}


@dataclass(frozen=True)
class CaseMix:
    """A hospital's population: cohort shares (summing to 1) and patient characteristics."""

    shares: dict[str, float]
    age_mean: float
    ckd: float  # prevalence of chronic kidney disease (raised baseline creatinine)
    diabetes: float


@dataclass(frozen=True)
class Population:
    """Per-stay characteristics drawn before the stay starts; every array has length N (stays)."""

    cohort: np.ndarray  # int8 index into COHORTS
    onset: np.ndarray  # hour the cohort's driver reaches full strength (prodrome starts 6 h earlier)
    severity: np.ndarray  # strength of the driver
    episode: np.ndarray  # hours the driver stays on after onset
    planned_los: np.ndarray  # hours a patient who is well enough stays
    age: np.ndarray
    female: np.ndarray
    ckd: np.ndarray
    diabetes: np.ndarray
    frailty: np.ndarray  # standard normal
    hb_loss: np.ndarray  # g/dL per day lost to blood draws and dilution, unseen until it adds up
    setpoint: dict[str, np.ndarray]  # personal healthy value of each measurement (canonical units)

    @property
    def n(self) -> int:
        return len(self.cohort)


@dataclass(frozen=True)
class Course:
    """The simulated course of every stay. Hours at or after ``end`` are outside the stay.

    ``end`` is the (fractional) hour the stay ends, by death when ``died``; ``truth`` holds the noiseless
    canonical value of each measurement per hour, ``treat`` whether each treatment was given that hour.
    """

    state: np.ndarray  # (N, HOURS, len(SYSTEMS)) float32
    truth: dict[str, np.ndarray]  # concept -> (N, HOURS) float32
    treat: np.ndarray  # (N, HOURS, len(TREATMENTS)) bool
    end: np.ndarray  # (N,) float64
    died: np.ndarray  # (N,) bool

    def severity(self) -> np.ndarray:
        return _severity(self.state)


def sample_population(rng: np.random.Generator, n: int, mix: CaseMix) -> Population:
    """Draw ``n`` stays of one hospital. Onsets are spread over the stay, many after hour 24, so that
    what happens after the 24 h prediction time is partly, not fully, visible before it."""
    shares = np.array([mix.shares[c] for c in COHORTS], dtype=float)
    cohort = rng.choice(len(COHORTS), size=n, p=shares / shares.sum()).astype(np.int8)
    sick = cohort > 0
    window = rng.choice(4, size=n, p=[0.25, 0.2, 0.4, 0.15])
    lo = np.array([-12.0, 12.0, 24.0, 48.0])[window]
    hi = np.array([12.0, 24.0, 48.0, 84.0])[window]
    onset = np.where(sick, rng.uniform(lo, hi), np.inf)
    # Frailty: hidden, but it shows in the admission values, worsens any deterioration and raises the risk
    # of death, which is what makes mortality partly predictable from the first day.
    frailty = rng.normal(0.0, 1.0, n)
    admitted_sick = 1.0 + 0.5 * (window == 0)
    severity = np.where(sick, rng.gamma(4.0, 0.3, n) * np.exp(0.2 * frailty) * admitted_sick, 0.0)
    # A bleed is stopped within hours; the other drivers smoulder for a day or more.
    bleed = cohort == COHORTS.index("hemorrhage")
    episode = np.where(bleed, rng.uniform(4.0, 16.0, n), rng.uniform(12.0, 60.0, n))
    stable_los = 10.0 + rng.gamma(2.0, 22.0, n)
    planned = np.where(sick, np.maximum(stable_los, onset + episode + rng.gamma(2.0, 12.0, n)), stable_los)
    age = np.clip(rng.normal(mix.age_mean, 15.0, n), 18.0, 97.0)
    female = rng.random(n) < 0.43
    ckd = rng.random(n) < mix.ckd
    diabetes = rng.random(n) < mix.diabetes
    male = ~female
    sp = {
        "heart_rate": rng.normal(82.0, 10.0, n),
        "map": rng.normal(84.0, 8.0, n),
        "resp_rate": rng.normal(17.0, 2.5, n),
        "spo2": np.minimum(rng.normal(97.0, 1.2, n), 99.5),
        "temperature": rng.normal(36.9, 0.3, n),
        "creatinine": np.exp(rng.normal(np.log(0.8 + 0.15 * male), 0.18, n)) * np.where(
            ckd, rng.uniform(1.2, 2.2, n), 1.0),
        "sodium": rng.normal(139.5, 2.0, n),
        "potassium": rng.normal(4.1, 0.35, n) + 0.3 * ckd,
        "bicarbonate": rng.normal(25.0, 1.8, n) - 1.5 * ckd,
        "lactate": np.exp(rng.normal(np.log(1.1), 0.25, n)),
        "hemoglobin": rng.normal(12.4 - 1.2 * female, 1.1, n) - 1.5 * ckd,
        "wbc": np.exp(rng.normal(np.log(7.5), 0.22, n)),
        "platelets": np.maximum(rng.normal(245.0, 55.0, n), 60.0),
        "glucose": rng.normal(115.0, 15.0, n) + 45.0 * diabetes,
    }
    sp["sbp"] = sp["map"] + rng.normal(45.0, 8.0, n) + 0.2 * (age - 60.0)
    sp["bun"] = 16.0 * sp["creatinine"] ** 0.8 * np.exp(rng.normal(0.0, 0.25, n))
    for concept, shift in _FRAILTY_SHIFT.items():
        sp[concept] = sp[concept] + shift * frailty
    sp["lactate"] = sp["lactate"] * np.exp(0.2 * frailty)
    hb_loss = rng.uniform(0.0, 1.2, n)
    return Population(cohort, onset, severity, episode, planned, age, female, ckd, diabetes, frailty, hb_loss,
                      sp)


def _severity(state: np.ndarray) -> np.ndarray:
    """Combined organ dysfunction, the quantity death and discharge depend on."""
    w = np.array([0.3, 1.2, 0.6, 1.0, 0.8, 0.6, 0.2], dtype=state.dtype)
    return state @ w


def _truth_at(pop: Population, x: np.ndarray, u: np.ndarray, wander: dict[str, np.ndarray],
              t: int) -> dict[str, np.ndarray]:
    """Noiseless canonical values at hour ``t`` from latent state ``x`` (N, S) and treatments ``u``."""
    sp = pop.setpoint
    inf, circ, ren, resp, acid, blood, fluid = (x[:, k] for k in range(len(SYSTEMS)))
    vent = u[:, 2]
    w = {k: v[:, t] for k, v in wander.items()}
    mean_ap = sp["map"] - 26.0 * circ - 6.0 * inf + 3.0 * fluid + w["map"]
    temp = sp["temperature"] + 1.7 * inf + w["temperature"]
    rr = sp["resp_rate"] + 8.0 * resp + 5.0 * acid + 3.0 * inf + w["resp_rate"]
    return {
        "heart_rate": sp["heart_rate"] + 18.0 * circ + 14.0 * inf + 12.0 * blood + 8.0 * resp
        + w["heart_rate"],
        "sbp": mean_ap + (sp["sbp"] - sp["map"]) - 8.0 * circ + w["sbp"],
        "map": mean_ap,
        "resp_rate": np.where(vent, 0.3 * rr + 0.7 * 16.0, rr),
        "spo2": np.minimum(sp["spo2"] - 10.0 * resp * (1.0 - 0.6 * vent) - 1.5 * fluid + w["spo2"], 100.0),
        "temperature": temp,
        "creatinine": sp["creatinine"] * (1.0 + 2.2 * ren) / (1.0 + 0.05 * fluid) * w["creatinine"],
        "bun": (sp["bun"] * (1.0 + 1.8 * ren) + 10.0 * blood) * w["bun"],
        "sodium": sp["sodium"] - 3.5 * fluid - 2.0 * ren + w["sodium"],
        "potassium": sp["potassium"] + 0.9 * ren + 0.4 * acid - 0.4 * u[:, 4] - 0.3 * u[:, 5]
        + w["potassium"],
        "bicarbonate": sp["bicarbonate"] - 9.0 * acid + w["bicarbonate"],
        "lactate": (sp["lactate"] + 4.0 * circ ** 1.3 + 1.0 * acid) * w["lactate"],
        "hemoglobin": sp["hemoglobin"] - 5.5 * blood - 0.6 * fluid - 0.8 * inf - pop.hb_loss * t / 24.0
        + w["hemoglobin"],
        "wbc": (sp["wbc"] * (1.0 + 1.2 * inf) + 2.0 * blood) * w["wbc"],
        "platelets": np.maximum(sp["platelets"] * (1.0 - 0.45 * inf - 0.35 * blood), 5.0) * w["platelets"],
        "glucose": sp["glucose"] + 35.0 * inf + 15.0 * circ - 45.0 * u[:, 4] + w["glucose"],
    }


def _wander(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Slow AR(1) fluctuations (about 6 h memory) of each measured value around its modelled level."""
    a = np.exp(-1.0 / 6.0)
    out = {}
    for concept, sd in (_WANDER_SD | _WANDER_LOG_SD).items():
        e = rng.normal(0.0, sd * np.sqrt(1.0 - a * a), (n, HOURS))
        e[:, 0] = rng.normal(0.0, sd, n)
        walk = lfilter([1.0], [1.0, -a], e, axis=1)
        out[concept] = np.exp(walk) if concept in _WANDER_LOG_SD else walk
    return out


def _policy(rng: np.random.Generator, v: dict[str, np.ndarray], x: np.ndarray, u: np.ndarray,
            abx_start: np.ndarray, t: int) -> np.ndarray:
    """Treatments for hour ``t + 1`` from what the team sees at hour ``t``: protocols with human noise."""
    n = len(x)
    r = rng.random((n, len(TREATMENTS)))
    vaso = np.where(u[:, 0], (v["map"] < 75.0) | (r[:, 0] > 0.25), (v["map"] < 63.0) & (r[:, 0] < 0.6))
    fluids = ((v["map"] < 68.0) | (v["lactate"] > 3.0) | (x[:, B_] > 0.3)) & (r[:, 1] < 0.5)
    vent = np.where(u[:, 2], (x[:, P_] > 0.35) | (v["spo2"] < 94.0) | (r[:, 2] > 0.1),
                    (v["spo2"] < 89.0) & (r[:, 2] < 0.5))
    start_abx = np.isinf(abx_start) & ((v["temperature"] > 38.3) | (v["wbc"] > 12.5)) & (r[:, 3] < 0.25)
    abx_start[start_abx] = t + 1
    since = t + 1 - abx_start
    abx = (since >= 0) & (since < 96) & (np.fmod(np.where(np.isinf(since), 1.0, since), 8.0) == 0)
    insulin = np.where(u[:, 4], (v["glucose"] > 140.0) & (r[:, 4] < 0.8),
                       (v["glucose"] > 180.0) & (r[:, 4] < 0.6))
    diuretic = (x[:, F_] > 0.7) & (v["map"] > 70.0) & (r[:, 5] < 0.15)
    return np.stack([vaso, fluids, vent, abx, insulin, diuretic], axis=1)


def _targets(pop: Population, x: np.ndarray, u: np.ndarray, abx_start: np.ndarray, t: int) -> np.ndarray:
    """Where each fast system is heading at hour ``t``: its cohort driver plus couplings minus treatment."""
    ramp = np.clip((t - pop.onset + 6.0) / 12.0, 0.0, 1.0) * (t < pop.onset + pop.episode)
    drive = np.zeros_like(x)
    for name, k in _PRIMARY.items():
        on = pop.cohort == COHORTS.index(name)
        drive[on, k] = pop.severity[on] * ramp[on]
    # Antibiotics do not reverse sepsis at once; they shrink its driver over the following day or two.
    since_abx = np.maximum(t - abx_start, 0.0)
    drive[:, I_] *= np.exp(-since_abx / 30.0)
    inf, circ, ren, resp, acid, blood, fluid = (x[:, k] for k in range(len(SYSTEMS)))
    vaso, fluids, vent, diur = u[:, 0], u[:, 1], u[:, 2], u[:, 5]
    target = np.empty_like(x)
    target[:, I_] = drive[:, I_] + 0.15 * drive[:, P_]
    target[:, C_] = (0.75 * inf + 0.6 * blood + 0.15 * resp - 0.45 * vaso - 0.15 * fluids
                     - 0.1 * fluids * (blood > 0))
    target[:, R_] = drive[:, R_] + 0.35 * inf + 0.45 * circ + 0.1 * diur
    target[:, P_] = drive[:, P_] + 0.25 * inf + 0.35 * np.maximum(fluid - 1.0, 0.0) - 0.35 * vent
    target[:, M_] = 0.55 * circ + 0.5 * ren + 0.3 * resp
    target[:, B_] = blood + 0.12 * drive[:, B_] - 0.004 * blood
    target[:, F_] = fluid + 0.06 * fluids - 0.12 * diur * (fluid > 0) - 0.01 * fluid + 0.01 * ren
    return np.maximum(target, 0.0)


def simulate(rng: np.random.Generator, pop: Population) -> Course:
    """Run every stay of ``pop`` through ``HOURS`` hours (see the module docstring for the model)."""
    n, s = pop.n, len(SYSTEMS)
    wander = _wander(rng, n)
    state = np.zeros((n, HOURS, s), dtype=np.float32)
    treat = np.zeros((n, HOURS, len(TREATMENTS)), dtype=bool)
    truth = {c: np.zeros((n, HOURS), dtype=np.float32) for c in MEASUREMENTS}
    x = np.zeros((n, s))
    u = np.zeros((n, len(TREATMENTS)), dtype=bool)
    abx_start = np.full(n, np.inf)
    end = np.full(n, float(HOURS))
    died = np.zeros(n, dtype=bool)
    open_ = np.ones(n, dtype=bool)
    age_risk = 0.025 * (pop.age - 65.0) + 1.0 * pop.frailty
    burden = np.zeros(n)  # severity smoothed over about a day: sustained failure kills, spikes less
    for t in range(HOURS):
        state[:, t] = x
        treat[:, t] = u
        v = _truth_at(pop, x, u, wander, t)
        for c in MEASUREMENTS:
            truth[c][:, t] = v[c]
        sev = _severity(x)
        # The stay ends within this hour by death (hazard of the combined dysfunction) or discharge.
        burden += (sev - burden) / 24.0
        hazard = 1.0 / (1.0 + np.exp(-(-9.0 + 2.2 * burden + 0.6 * sev + age_risk)))
        dies = open_ & (rng.random(n) < hazard)
        leaves = open_ & ~dies & (t >= pop.planned_los) & (sev < 0.5)
        frac = rng.uniform(0.05, 0.95, n)
        end = np.where(dies | leaves, t + frac, end)
        died |= dies
        open_ &= ~(dies | leaves)
        target = _targets(pop, x, u, abx_start, t)
        x = np.maximum(x + _RELAX * (target - x) + rng.normal(0.0, 1.0, (n, s)) * _PROCESS_SD, 0.0)
        x[:, B_] = target[:, B_]
        x[:, F_] = target[:, F_]
        u = _policy(rng, v, x, u, abx_start, t)
    return Course(state, truth, treat, end, died)
