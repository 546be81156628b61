"""Synthetic multi-hospital ICU data in MEDS format (``clin-jepa synth``).

Modules: ``physiology`` (hidden organ-system state, cohorts, treatments, death), ``observe`` (what gets
measured and charted), ``profiles`` (how each hospital differs: case mix, codes, units, sampling),
``hospital`` (subjects, readmissions, calendar), ``meds_writer`` (the MEDS files) and ``check`` (task
positive rates and a last-value baseline, to confirm the tasks are learnable but not trivial).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from clin_jepa.data.synth.extra import extra_observations, with_extra_codings
from clin_jepa.data.synth.hospital import Hospital, simulate_hospital
from clin_jepa.data.synth.meds_writer import write_hospital
from clin_jepa.data.synth.profiles import BASE_PROFILES, MAX_SITES, HospitalProfile, hospital_profiles
from clin_jepa.errors import ConfigError
from clin_jepa.io import atomic_write_text

__all__ = ["Hospital", "HospitalProfile", "MAX_SITES", "SiteOutput", "hospital_profiles", "simulate_site",
           "synthesize"]


@dataclass(frozen=True)
class SiteOutput:
    site: str
    root: Path
    config: Path
    counts: dict[str, int]


def _site_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams per site (so adding sites leaves earlier sites unchanged) and per stage (so a
    change in how data are written cannot change what was simulated)."""
    sim, write = np.random.SeedSequence([seed, index]).spawn(2)
    return np.random.default_rng(sim), np.random.default_rng(write)


def _with_extra_concepts(hospital: Hospital, seed: int, index: int) -> Hospital:
    """``hospital`` also charting the catalog's extra concepts, from a third stream of the site's seed (the
    first two, and so everything the default output holds, are untouched)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]).spawn(3)[2])
    obs = hospital.obs
    extra = extra_observations(rng, hospital.course, obs.stay, obs.hour, obs.concept, obs.lab_draws)
    base = BASE_PROFILES[index % len(BASE_PROFILES)].site
    return replace(hospital, profile=with_extra_codings(hospital.profile, base), extra=extra)


def simulate_site(profile: HospitalProfile, index: int, n_patients: int, seed: int) -> Hospital:
    """The simulated hospital that ``synthesize`` writes for site number ``index``."""
    return simulate_hospital(profile, n_patients, _site_rngs(seed, index)[0])


def synthesize(out: str | Path, n_sites: int = 3, n_patients: int = 600, seed: int = 0,
               force: bool = False, subjects_per_shard: int = 128,
               extra_concepts: bool = False) -> list[SiteOutput]:
    """Write ``n_sites`` synthetic hospitals under ``out``: ``out/<site>/`` (MEDS) and ``out/<site>.yaml``
    (its site config, paths relative to the YAML). Same arguments, byte-identical files. With
    ``extra_concepts`` the hospitals also chart diastolic BP, GCS, FiO2, urine output, bilirubin, INR,
    albumin and pH (``synth/extra.py``): the same patients, more events.

    Raises :class:`ConfigError` for invalid arguments or a non-empty ``out`` without ``force``; with
    ``force`` only this command's own outputs (site folders and YAMLs) are replaced.
    """
    if not 1 <= n_sites <= MAX_SITES:
        raise ConfigError(f"--sites: must be between 1 and {MAX_SITES}, got {n_sites}")
    if n_patients < 10:
        raise ConfigError(f"--patients: must be >= 10 per site (splits need subjects), got {n_patients}")
    if seed < 0:
        raise ConfigError(f"--seed: must be >= 0, got {seed}")
    if subjects_per_shard < 1:
        raise ConfigError(f"--subjects-per-shard: must be >= 1, got {subjects_per_shard}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out: {out} is not empty; choose another folder or pass --force to replace "
                          "the synthetic hospitals in it")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, profile in enumerate(hospital_profiles(n_sites)):
        sim_rng, write_rng = _site_rngs(seed, i)
        hospital = simulate_hospital(profile, n_patients, sim_rng)
        if extra_concepts:
            hospital = _with_extra_concepts(hospital, seed, i)
            profile = hospital.profile
        root = out / profile.site
        counts = write_hospital(hospital, root, write_rng, subjects_per_shard,
                                f"seed={seed} patients={n_patients}")
        config = out / f"{profile.site}.yaml"
        atomic_write_text(config, profile.site_config_yaml(profile.site, f"state/{profile.site}"))
        results.append(SiteOutput(profile.site, root, config, counts))
    return results
