"""Synthetic hospitals: determinism, MEDS schema, real heterogeneity, site configs, task difficulty, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clin_jepa.cli import main
from clin_jepa.config import load_site_config
from clin_jepa.data.concepts import to_canonical
from clin_jepa.data.synth import physiology as ph
from clin_jepa.data.synth import synthesize
from clin_jepa.data.synth.check import last_values, task_report
from clin_jepa.data.synth.physiology import (
    COHORTS,
    MEASUREMENTS,
    TREATMENTS,
    CaseMix,
    sample_population,
    simulate,
)
from clin_jepa.data.synth.profiles import BASE_PROFILES, hospital_profiles
from clin_jepa.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SITES = ("hospital_a", "hospital_b", "hospital_c")


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _events(root: Path):
    shards = sorted((root / "data").rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in shards]).to_pandas()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "out"
    synthesize(out, n_sites=3, n_patients=150, seed=7, subjects_per_shard=40)
    return out


def test_ground_truth_is_written_beside_the_meds_data_and_joins_each_eligible_stay_once(small: Path) -> None:
    from clin_jepa.data.harmonize import CodeMapper, find_stays, harmonize
    from clin_jepa.data.meds import iter_shards
    from clin_jepa.data.synth.ground_truth import FILENAME, SCHEMA

    for site in SITES:
        root = small / site
        assert not list((root / "data").rglob(FILENAME)) and not list((root / "metadata").rglob(FILENAME))
        gt = pq.read_table(root / FILENAME)
        assert gt.schema.equals(SCHEMA)
        df = gt.to_pandas()
        keys = list(zip(df.subject_id, df.stay_start.astype("int64"), strict=True))
        assert len(set(keys)) == len(keys)
        cfg = load_site_config(small / f"{site}.yaml")
        mapper = CodeMapper(cfg)
        all_stays, eligible = set(), set()
        for shard in iter_shards(cfg.data_path):
            stays = find_stays(harmonize(shard, mapper))
            pairs = list(zip(stays.subject.tolist(), stays.start.tolist(), strict=True))
            all_stays.update(pairs)
            eligible.update(p for p, ok in zip(pairs, stays.eligible, strict=True) if ok)
        assert set(keys) == all_stays and len(eligible) > 0.8 * len(keys)
        assert set(df.cohort) == set(COHORTS)
        stable = df.cohort == "stable"
        assert df.onset_hour[stable].isna().all() and df.onset_hour[~stable].notna().all()
        assert not df.deteriorating[stable].any()
        det = df[df.deteriorating]
        assert len(det) > 0.1 * len(df) and ((det.onset_hour > 24) & (det.onset_hour < 72)).all()
        # ``severity_24h`` is defined for every stay still open at hour 24, so for every eligible stay
        in_eligible = np.array([k in eligible for k in keys])
        assert df.severity_24h[in_eligible].notna().all() and df.severity_peak[in_eligible].notna().all()
        assert (df.severity_peak[in_eligible] >= 0).all()
        assert df.severity_peak[df.deteriorating].median() > 2 * df.severity_peak[stable].median()


def test_same_arguments_give_identical_files_and_another_seed_does_not(small: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    synthesize(again, n_sites=3, n_patients=150, seed=7, subjects_per_shard=40)
    synthesize(other, n_sites=3, n_patients=150, seed=8, subjects_per_shard=40)
    first = _digests(small)
    assert any(name.endswith(".parquet") for name in first)
    assert _digests(again) == first
    changed = {k for k, v in _digests(other).items() if first.get(k) != v}
    assert {f"{s}/data/train/0.parquet" for s in SITES} <= changed


def test_adding_a_site_leaves_earlier_sites_unchanged(small: Path, tmp_path: Path) -> None:
    synthesize(tmp_path / "one", n_sites=1, n_patients=150, seed=7, subjects_per_shard=40)
    one = _digests(tmp_path / "one" / "hospital_a")
    assert one == _digests(small / "hospital_a")


def test_meds_layout_and_schema(small: Path) -> None:
    for site in SITES:
        root = small / site
        shards = sorted((root / "data").rglob("*.parquet"))
        assert len(list((root / "data" / "train").glob("*.parquet"))) >= 2
        seen: dict[int, Path] = {}
        for path in shards:
            table = pq.read_table(path)
            assert table.schema.names == ["subject_id", "time", "code", "numeric_value"]
            assert table.schema.field("subject_id").type == pa.int64()
            assert table.schema.field("time").type == pa.timestamp("us")
            assert table.schema.field("code").type == pa.string()
            assert table.schema.field("numeric_value").type == pa.float32()
            df = table.to_pandas()
            for sid in df.subject_id.unique():
                assert sid not in seen, f"subject {sid} in {seen.get(sid)} and {path}"
                seen[int(sid)] = path
            # contiguous subjects, sorted by time inside each, static (null-time) rows first
            starts = df.subject_id.ne(df.subject_id.shift()).cumsum()
            assert starts.max() == df.subject_id.nunique()
            t = df.time.astype("int64").where(df.time.notna(), np.iinfo(np.int64).min)
            assert (t.groupby(df.subject_id).diff().dropna() >= 0).all()
        splits = pq.read_table(root / meds.subject_splits_filepath)
        assert splits.schema.equals(meds.SubjectSplitSchema.schema())
        split_of = dict(zip(splits.column("subject_id").to_pylist(), splits.column("split").to_pylist(),
                            strict=True))
        assert set(split_of) == set(seen)
        assert set(split_of.values()) == {"train", "tuning", "held_out"}
        for sid, path in seen.items():
            assert path.parent.name == split_of[sid]
        codes = pq.read_table(root / meds.code_metadata_filepath)
        assert codes.schema.equals(meds.CodeMetadataSchema.schema())
        info = json.loads((root / meds.dataset_metadata_filepath).read_text())
        assert info["etl_name"] == "clin-jepa synth" and info["meds_version"] == meds.__version__
        assert not list(small.glob(".tmp-*")) and not list(small.glob(".old-*"))


def test_events_follow_the_clinical_story(small: Path) -> None:
    df = _events(small / "hospital_a")
    p = BASE_PROFILES[0]
    assert df.loc[df.time.isna(), "code"].isin(p.sex_codes).all()
    per_subject = df.groupby("subject_id")
    births = df[df.code == meds.birth_code].groupby("subject_id").size()
    assert (births == 1).all() and len(births) == per_subject.ngroups
    deaths = df[df.code == meds.death_code].set_index("subject_id").time
    assert deaths.index.is_unique and 0 < len(deaths) < per_subject.ngroups
    last_time = per_subject.time.max()
    assert (last_time[deaths.index] == deaths).all(), "nothing may happen after death"
    admits = df[df.code.str.fullmatch(p.icu_start_regex)].groupby("subject_id").size()
    assert admits.max() == 2 and (admits == 2).sum() > 0, "some subjects have a second ICU stay"
    assert admits.sum() == (df.code == p.icu_discharge_code).sum()


def test_hospitals_really_differ(small: Path) -> None:
    frames = {s: _events(small / s) for s in SITES}
    a, b, c = (p.codings for p in BASE_PROFILES)
    creat_a = frames["hospital_a"].query("code == @a['creatinine'].codes[0]").numeric_value.median()
    creat_b = frames["hospital_b"].query("code == @b['creatinine'].codes[0]").numeric_value.median()
    assert 70 < creat_b / creat_a < 110, (creat_a, creat_b)  # umol/L vs mg/dL: about 88x
    temp_a = frames["hospital_a"].query("code == @a['temperature'].codes[0]").numeric_value.median()
    temp_b = frames["hospital_b"].query("code == @b['temperature'].codes[0]").numeric_value.median()
    assert 36 < temp_a < 38 and 97 < temp_b < 101
    glu_c = frames["hospital_c"].query("code == @c['glucose'].codes[0]").numeric_value.median()
    assert 5 < glu_c < 10  # mmol/L
    codes = {s: set(f.code) - {meds.birth_code, meds.death_code} for s, f in frames.items()}
    assert not (codes["hospital_a"] & codes["hospital_b"]) and not (codes["hospital_b"] & codes["hospital_c"])
    # vitals every hour at a, every second hour at c
    hr_a = (frames["hospital_a"].code == a["heart_rate"].codes[0]).sum()
    hr_c = (frames["hospital_c"].code == c["heart_rate"].codes[0]).sum()
    assert hr_c < 0.7 * hr_a
    # case mix: hospital_c (surgical) ventilates and bleeds more than hospital_a
    vent = {s: (frames[s].code.isin(p.codings["mechanical_ventilation"].codes)).sum()
            for s, p in zip(SITES, BASE_PROFILES, strict=True)}
    assert vent["hospital_c"] > vent["hospital_a"]


def test_site_units_convert_back_with_the_project_concept_table() -> None:
    values = np.array([0.5, 1.0, 7.3, 140.0])
    for profile in hospital_profiles(3):
        for concept in MEASUREMENTS:
            coding = profile.codings[concept]
            site_values = values * coding.scale + coding.offset
            np.testing.assert_allclose(to_canonical(site_values, concept, coding.unit), values, rtol=1e-6)


def test_generated_and_shipped_site_configs(small: Path) -> None:
    for profile in BASE_PROFILES:
        cfg = load_site_config(small / f"{profile.site}.yaml")
        assert cfg.site == profile.site and cfg.data_path == (small / profile.site).resolve()
        assert {r.concept for r in cfg.code_map} == set(MEASUREMENTS) | set(TREATMENTS)
        shipped = REPO / "site_configs" / f"{profile.site}.yaml"
        expected = profile.site_config_yaml(f"../data/synthetic/{profile.site}", f"../state/{profile.site}")
        assert shipped.read_text() == expected, f"{shipped} is out of date with profiles.py"
        shipped_cfg = load_site_config(shipped)
        assert shipped_cfg.data_path == (REPO / "data" / "synthetic" / profile.site).resolve()
        assert shipped_cfg.state_dir == (REPO / "state" / profile.site).resolve()
        assert shipped_cfg.code_map == cfg.code_map


def test_validate_accepts_every_generated_hospital(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", *(str(small / f"{s}.yaml") for s in SITES)]) == 0
    out = capsys.readouterr().out
    for site in SITES:
        assert f"site {site}" in out
    assert out.count("unmapped codes (2,") == 3  # a few truly unmapped labs per site, under the limit


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("synth_tasks") / "out"
    outputs = synthesize(out, n_sites=3, n_patients=1500, seed=0)
    return {o.site: task_report(load_site_config(o.config)) for o in outputs}


def test_every_task_has_a_moderate_positive_rate_at_every_hospital(demo_report: dict) -> None:
    for site, rows in demo_report.items():
        assert len(rows) == 8
        for r in rows:
            assert 0.03 <= r.positive_rate <= 0.40, f"{site} {r.task}: {r.positive_rate:.3f}"
            assert r.n_defined > 1000


def test_last_value_baseline_is_informative_but_far_from_perfect(demo_report: dict) -> None:
    for site, rows in demo_report.items():
        for r in rows:
            assert 0.55 < r.auroc < 0.95, f"{site} {r.task}: AUROC {r.auroc:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_task_difficulty_holds_for_other_seeds_at_scale(tmp_path: Path, seed: int) -> None:
    for o in synthesize(tmp_path, n_sites=3, n_patients=4000, seed=seed):
        rows = task_report(load_site_config(o.config))
        for r in rows:
            assert 0.05 <= r.positive_rate <= 0.38, f"{o.site} {r.task}: {r.positive_rate:.3f}"
            assert 0.6 < r.auroc < 0.93, f"{o.site} {r.task}: AUROC {r.auroc:.3f}"


def test_cli_help_and_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--sites", "--patients", "--seed", "--subjects-per-shard", "--check", "--force"):
        assert flag in text
    assert main(["synth", "--out", str(tmp_path / "x"), "--patients", "-5"]) == 2
    assert "--patients" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "x"), "--sites", "0"]) == 2
    assert not (tmp_path / "x").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert main(["synth", "--out", str(busy), "--patients", "20"]) == 2
    assert "--force" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_force_replaces_own_outputs_and_cleans_an_interrupted_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    synthesize(out, n_sites=1, n_patients=20, seed=1)
    (out / "notes.txt").write_text("keep me")
    leftover = out / ".tmp-hospital_a" / "data"  # what a killed run leaves: never a complete-looking dataset
    leftover.mkdir(parents=True)
    with pytest.raises(ConfigError, match="not empty"):
        synthesize(out, n_sites=1, n_patients=20, seed=2)
    synthesize(out, n_sites=1, n_patients=20, seed=2, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["hospital_a", "hospital_a.yaml", "notes.txt"]
    fresh = tmp_path / "fresh"
    synthesize(fresh, n_sites=1, n_patients=20, seed=2)
    assert _digests(out / "hospital_a") == _digests(fresh / "hospital_a")


def test_more_sites_than_profiles_are_distinct_variants(tmp_path: Path) -> None:
    profiles = hospital_profiles(5)
    assert [p.site for p in profiles] == [f"hospital_{x}" for x in "abcde"]
    assert profiles[3].mix.shares != profiles[0].mix.shares
    assert abs(sum(profiles[3].mix.shares.values()) - 1.0) < 1e-9
    with pytest.raises(ConfigError, match="--sites"):
        synthesize(tmp_path / "x", n_sites=27)


def test_tokenized_tensors_agree_with_the_check(small: Path) -> None:
    from clin_jepa.data.stats import compute_site_statistics, merge_statistics, quantile_edges
    from clin_jepa.data.tasks import load_tasks
    from clin_jepa.data.tokenize import build_site_tensors

    cfgs = [load_site_config(small / f"{s}.yaml") for s in SITES]
    disc = quantile_edges(merge_statistics([compute_site_statistics(c) for c in cfgs]))
    assert set(disc.concepts) == set(MEASUREMENTS)
    tasks = load_tasks()
    for cfg in cfgs:
        st = build_site_tensors(cfg, disc, tasks, use_cache=False)
        lv = last_values(cfg, tasks)
        np.testing.assert_array_equal(st.labels, lv.labels)
        assert st.mask[:, :24].all() and 0.3 < st.mask.all(axis=1).mean() < 0.9  # some stays end before 72 h
        assert (st.treat.sum(axis=(0, 1)) > 0).all(), "every treatment is given somewhere"
        first_day = st.bins[:, :24][st.mask[:, :24]]
        assert (first_day > 0).mean(axis=0).min() > 0.02, "every concept is observed in the first day"


def test_physiology_cohorts_treatments_and_outcomes() -> None:
    mix = CaseMix({c: 1 / len(COHORTS) for c in COHORTS}, age_mean=65.0, ckd=0.1, diabetes=0.2)
    rng = np.random.default_rng(0)
    pop = sample_population(rng, 1500, mix)
    course = simulate(rng, pop)
    sev = course.severity()
    inside = np.arange(sev.shape[1])[None, :] < course.end[:, None]
    peak = np.where(inside, sev, 0.0).max(axis=1)
    stable = pop.cohort == 0
    for k in range(1, len(COHORTS)):
        sick = pop.cohort == k
        assert np.median(peak[sick]) > 2 * np.median(peak[stable]), COHORTS[k]
        assert course.died[sick].mean() > course.died[stable].mean(), COHORTS[k]
    onset_hours = pop.onset[~stable]
    assert 0.3 < np.mean((onset_hours > 24) & (onset_hours <= 48)) < 0.5  # much happens after 24 h
    assert 0.03 < np.mean(course.end < 24) < 0.2 and course.end.max() > 96
    # treatments follow the state: pressors when the pressure is low, ventilation when saturation is low
    tr = course.treat
    low_map = course.truth["map"][:, :-1] < 63
    assert tr[:, 1:, 0][low_map].mean() > 5 * tr[:, 1:, 0][~low_map].mean()
    low_spo2 = course.truth["spo2"][:, :-1] < 89
    assert tr[:, 1:, 2][low_spo2].mean() > 5 * tr[:, 1:, 2][~low_spo2].mean()


def test_treatments_act_on_the_latent_state() -> None:
    rng = np.random.default_rng(1)
    only_sepsis = {c: float(c == "sepsis") for c in ph.COHORTS}
    pop = ph.sample_population(rng, 50, ph.CaseMix(only_sepsis, 65.0, 0.0, 0.0))
    x = np.full((50, len(ph.SYSTEMS)), 0.8)
    off = np.zeros((50, len(ph.TREATMENTS)), dtype=bool)

    def target(treatment: str, t: int = 40, abx_start: float = np.inf) -> np.ndarray:
        u = off.copy()
        if treatment:
            u[:, ph.TREATMENTS.index(treatment)] = True
        return ph._targets(pop, x, u, np.full(50, abx_start), t)

    none = target("")
    assert (target("vasopressor")[:, ph.C_] < none[:, ph.C_]).all()
    assert (target("mechanical_ventilation")[:, ph.P_] < none[:, ph.P_]).all()
    assert (target("diuretic")[:, ph.F_] < none[:, ph.F_]).all()
    active = none[:, ph.I_] > 0
    assert active.sum() > 10
    late = target("", abx_start=0.0)[:, ph.I_]  # antibiotics since hour 0 shrink the sepsis driver
    assert (late[active] < none[active, ph.I_]).all()
