"""One synthetic hospital: its stays simulated, grouped into subjects and placed on the calendar.

Most subjects have one ICU stay; about one in twelve survivors comes back for a second stay days to weeks
later (simulated like any other stay, attached to a survivor of the same sex). Birth dates follow from
the age at the first admission, so ages, stays and deaths are consistent on the calendar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clin_jepa.data.synth.extra import ExtraObservations
from clin_jepa.data.synth.observe import Observations, observe
from clin_jepa.data.synth.physiology import Course, Population, sample_population, simulate
from clin_jepa.data.synth.profiles import HospitalProfile

US_PER_HOUR = 3_600_000_000
_EPOCH_2021 = np.datetime64("2021-01-01T00:00", "us").astype(np.int64)
_READMIT_SHARE = 0.08


@dataclass(frozen=True)
class Hospital:
    """Every stay of one hospital with its calendar.

    Stay ``i`` belongs to subject ``stay_subject[i]`` (an index into ``subject_id``) and starts at
    ``admit_us[i]`` (microseconds since the Unix epoch). A subject who died has no later stay.
    """

    profile: HospitalProfile
    pop: Population
    course: Course
    obs: Observations
    stay_subject: np.ndarray
    admit_us: np.ndarray
    subject_id: np.ndarray  # int64, sorted
    birth_us: np.ndarray
    female: np.ndarray
    extra: ExtraObservations | None = None  # ``synth --extra-concepts`` only (synth/extra.py)


def _attach_readmissions(rng: np.random.Generator, n_first: int, pop: Population,
                         course: Course) -> tuple[np.ndarray, np.ndarray]:
    """Map each extra stay (index >= n_first) to a surviving first stay of the same sex; returns the kept
    stays and, for each, its first stay's index."""
    host = np.arange(len(course.end))
    keep = np.ones(len(course.end), dtype=bool)
    extra = np.arange(n_first, len(course.end))
    survivors = np.flatnonzero(~course.died[:n_first])
    for sex in (False, True):
        guests = extra[pop.female[extra] == sex]
        hosts = rng.permutation(survivors[pop.female[survivors] == sex])
        m = min(len(guests), len(hosts))
        host[guests[:m]] = hosts[:m]
        keep[guests[m:]] = False
    return np.flatnonzero(keep), host[keep]


def simulate_hospital(profile: HospitalProfile, n_patients: int, rng: np.random.Generator) -> Hospital:
    """Simulate ``n_patients`` subjects of ``profile`` (plus their readmissions) with ``rng``."""
    n_extra = int(round(_READMIT_SHARE * n_patients))
    pop = sample_population(rng, n_patients + n_extra, profile.mix)
    course = simulate(rng, pop)
    stays, first = _attach_readmissions(rng, n_patients, pop, course)
    pop = Population(**{k: (v[stays] if isinstance(v, np.ndarray) else {c: a[stays] for c, a in v.items()})
                        for k, v in vars(pop).items()})
    course = Course(course.state[stays], {c: a[stays] for c, a in course.truth.items()},
                    course.treat[stays], course.end[stays], course.died[stays])
    s = profile.sampling
    obs = observe(rng, course, s.vital_every_h, s.vital_prob, s.lab_every_h, s.skip)

    minute = 60_000_000
    first_admit = _EPOCH_2021 + rng.integers(0, 3 * 365 * 24 * 60, n_patients) * minute
    admit = first_admit[first].copy()
    is_extra = stays >= n_patients
    # A readmission starts days to weeks after its subject's first ICU discharge.
    first_end = (course.end[first[is_extra]] * US_PER_HOUR).astype(np.int64)  # first stays keep their index
    gap_days = rng.uniform(3.0, 60.0, is_extra.sum())
    admit[is_extra] += first_end + (gap_days * 24 * 60).astype(np.int64) * minute
    ages_us = (pop.age[:n_patients] * 365.25 * 24 * US_PER_HOUR).astype(np.int64)
    birth = first_admit - ages_us
    subject_id = profile.subject_id_base + np.sort(rng.choice(9_000_000, n_patients, replace=False))
    return Hospital(profile, pop, course, obs, first, admit, subject_id, birth, pop.female[:n_patients])
