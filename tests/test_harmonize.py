"""Harmonization: unit conversion, code mapping precedence, ICU stays and event attribution."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import handmade_rows
from fixtures import CODE_MAP, events_frame, icu_patient
from hypothesis import given, settings
from hypothesis import strategies as st

from clin_jepa.data.concepts import from_canonical, load_concepts, to_canonical
from clin_jepa.data.harmonize import (
    HOUR_US,
    IGNORED,
    MAPPED,
    SPECIAL,
    STAY,
    UNMAPPED,
    CodeMapper,
    attribute_events,
    find_stays,
    harmonize,
)
from clin_jepa.data.meds import NAT, iter_shards, shard_paths
from clin_jepa.errors import ConfigError

# every unit the synthetic sites and the shipped example configs write, and the UCUM spellings of issue 13
ALL_UNITS = [("heart_rate", "bpm"), ("heart_rate", "/min"), ("sbp", "mm[Hg]"), ("sbp", "kPa"),
             ("temperature", "Cel"), ("temperature", "[degF]"), ("temperature", "degF"),
             ("creatinine", "umol/L"), ("creatinine", "mg/dL"), ("bun", "mmol/L"), ("glucose", "mmol/L"),
             ("lactate", "mg/dL"), ("hemoglobin", "g/L"), ("hemoglobin", "mmol/L"), ("wbc", "/uL"),
             ("wbc", "10*3/uL"), ("wbc", "10^9/L"), ("wbc", "K/uL"), ("platelets", "10*3/uL"),
             ("spo2", "fraction"), ("fio2", "%"), ("bilirubin", "umol/L"), ("albumin", "g/L"),
             ("gcs_total", "{score}"), ("ph", "[pH]"), ("inr", "{INR}"), ("urine_output", "mL/h")]


@pytest.mark.parametrize(("concept", "unit"), ALL_UNITS)
@settings(max_examples=25, deadline=None)
@given(x=st.floats(min_value=-1e4, max_value=1e4, allow_nan=False))
def test_unit_conversion_round_trips(concept: str, unit: str, x: float) -> None:
    back = from_canonical(to_canonical(np.array([x]), concept, unit), concept, unit)[0]
    assert back == pytest.approx(x, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("concept", "unit", "local", "canonical"), [
    ("temperature", "degF", 98.6, 37.0), ("temperature", "°F", 32.0, 0.0),
    ("temperature", "degC", 37.0, 37.0),
    ("creatinine", "umol/L", 88.42, 1.0), ("creatinine", "µmol/L", 176.84, 2.0),
    ("hemoglobin", "g/L", 140.0, 14.0), ("hemoglobin", "mmol/L", 5.0, 8.055),
    ("bun", "mmol/L", 10.0, 28.0), ("glucose", "mmol/L", 5.55, 99.9888), ("lactate", "mg/dL", 9.01, 1.0),
    ("spo2", "fraction", 0.95, 95.0), ("sodium", "mEq/L", 140.0, 140.0), ("wbc", "K/uL", 12.0, 12.0),
    ("wbc", "/uL", 12000.0, 12.0), ("wbc", "10*3/uL", 7.5, 7.5), ("wbc", "10^9/L", 7.5, 7.5),
    ("sbp", "mm[Hg]", 120.0, 120.0), ("temperature", "Cel", 37.0, 37.0),
    ("temperature", "[degF]", 212.0, 100.0),
    ("glucose", "mg/dL", 90.0, 90.0), ("bilirubin", "umol/L", 17.10396, 1.0), ("fio2", "fraction", 0.4, 40.0),
    ("albumin", "g/L", 35.0, 3.5),
])
def test_known_conversions(concept: str, unit: str, local: float, canonical: float) -> None:
    assert to_canonical(np.array([local]), concept, unit)[0] == pytest.approx(canonical, rel=1e-6)


def test_every_canonical_unit_converts_to_itself_exactly() -> None:
    for c in load_concepts().measurements:
        assert c.conversion(c.unit) == (1.0, 0.0)
        assert c.lo < c.hi


@pytest.mark.parametrize(("concept", "unit"), [("wbc", "mg/dL"), ("sodium", "degF"), ("sbp", "furlongs")])
def test_a_unit_the_library_cannot_convert_is_a_config_error(concept: str, unit: str) -> None:
    with pytest.raises(ConfigError, match=repr(unit)):
        load_concepts().get(concept).conversion(unit)


def test_two_sites_with_different_units_harmonize_to_the_same_values(make_site) -> None:
    rows_a = icu_patient(1, "2021-01-01", 30, [(1, "creatinine", 2.0), (2, "temperature", 38.5)])
    site_a = make_site(rows_a, name="a")  # default coding: umol/L and degF
    rows_b = [dict(r) for r in rows_a]
    for r in rows_b:  # site B records canonical units directly
        if r["code"] == "LAB//CREAT":
            r["numeric_value"] = 2.0
        if r["code"] == "VITAL//TEMP":
            r["numeric_value"] = 38.5
    code_map = [dict(r, unit={"LAB//CREAT": "mg/dL", "VITAL//TEMP": "degC"}.get(r["code"], r.get("unit")))
                if "unit" in r else dict(r) for r in CODE_MAP]
    site_b = make_site(rows_b, name="b", code_map=code_map)
    values = []
    for cfg in (site_a, site_b):
        h = harmonize(next(iter_shards(cfg.data_path)), CodeMapper(cfg))
        names = np.array(load_concepts().names)
        got = {names[c]: v for c, v in zip(h.concept, h.value, strict=True) if c >= 0}
        values.append((got["creatinine"], got["temperature"]))
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert values[0] == pytest.approx((2.0, 38.5), rel=1e-5)


def test_code_categories_follow_the_documented_precedence(make_site) -> None:
    cfg = make_site(handmade_rows(), code_map=[
        {"regex": "LAB//.*", "concept": "sodium", "unit": "mmol/L"},  # first matching rule wins
        {"code": "LAB//CREAT", "concept": "creatinine", "unit": "umol/L"},
        {"code": "VITAL//HR", "concept": "heart_rate", "unit": "furlongs"},  # unusable rule -> unmapped
    ], ignore_codes=["VITAL//.*"])
    m = CodeMapper(cfg)
    table = load_concepts()
    assert m.decide("ICU//ADMIT")[0] == STAY and m.decide("ICU//ADMIT")[4]
    assert m.decide("ICU//DISCHARGE")[0] == STAY and m.decide("ICU//DISCHARGE")[5]
    assert m.decide("MEDS_BIRTH")[0] == SPECIAL and m.decide("MEDS_DEATH")[0] == SPECIAL
    assert m.decide("LAB//CREAT")[:2] == (MAPPED, table.index("sodium"))
    assert m.decide("VITAL//HR")[0] == UNMAPPED
    assert m.decide("VITAL//SBP")[0] == IGNORED
    assert m.decide("SOMETHING//ELSE")[0] == UNMAPPED


def _stays_of(make_site, rows, **kw):
    cfg = make_site(events_frame(rows), **kw)
    h = harmonize(next(iter_shards(cfg.data_path)), CodeMapper(cfg))
    return h, find_stays(h)


def test_stays_on_handmade_subjects(make_site) -> None:
    _, stays = _stays_of(make_site, handmade_rows(), splits=dict.fromkeys(range(1, 6), "train"))
    assert stays.subject.tolist() == [1, 2, 3, 4, 5, 5]
    hours = (stays.end - stays.start) / HOUR_US
    assert hours.tolist() == [60, 30, 10, 50, 26, 40]  # subject 2's stay ends at death (30 h), not 40 h
    assert stays.eligible.tolist() == [True, True, False, True, True, True]
    assert (stays.birth != NAT).all() and stays.death[1] != NAT
    assert (stays.death[[0, 2, 3, 4, 5]] == NAT).all()


def test_repeated_start_open_stay_and_back_to_back_stays(make_site) -> None:
    rows = icu_patient(7, "2022-01-01", 30, [(5, "heart_rate", 80)])
    rows.insert(2, dict(rows[1], time=rows[1]["time"] + np.timedelta64(2, "h")))  # a transfer: second start
    back_to_back = icu_patient(8, "2022-01-01", 25, [])
    back_to_back += [dict(back_to_back[1], time=back_to_back[-1]["time"])]  # new start at the end instant
    back_to_back += [dict(back_to_back[-2], time=back_to_back[-2]["time"] + np.timedelta64(30, "h"))]
    open_stay = icu_patient(9, "2022-01-01", None, [(40, "heart_rate", 80)])
    _, stays = _stays_of(make_site, rows + back_to_back + open_stay)
    hours = ((stays.end - stays.start) / HOUR_US).tolist()
    assert stays.subject.tolist() == [7, 8, 8, 9]
    assert hours == [30, 25, 30, 40]  # the open stay closes at the subject's last event


def test_events_go_to_the_latest_stay_started_before_them(make_site) -> None:
    h, stays = _stays_of(make_site, handmade_rows())
    ev = attribute_events(h, stays, horizon_hours=72)
    subj = stays.subject[ev.stay]
    assert (ev.offset >= 0).all() and (ev.offset < 72 * HOUR_US).all()
    # subject 5's hemoglobin (30 h into the second stay) belongs to the second stay, not the first
    hgb = load_concepts().index("hemoglobin")
    sel = (subj == 5) & (ev.concept == hgb)
    assert ev.stay[sel].tolist() == [5] and ev.offset[sel].tolist() == [30 * HOUR_US]
    assert ev.value[sel] == pytest.approx([7.0])


def test_shards_are_read_in_a_fixed_order(make_site) -> None:
    cfg = make_site(handmade_rows(), n_shards=2, splits=dict.fromkeys(range(1, 6), "train"))
    names = [p.relative_to(cfg.data_path).as_posix() for p in shard_paths(cfg.data_path)]
    assert names == ["data/train/0.parquet", "data/train/1.parquet"]
