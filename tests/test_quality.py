"""Units declared by a site (library or scale/offset) and data_quality policies (issue 13)."""

from __future__ import annotations

from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures import CODE_MAP, random_events, write_meds, write_site_config

from clin_jepa.cli import main
from clin_jepa.config import load_site_config
from clin_jepa.data.harmonize import CodeMapper, harmonize
from clin_jepa.data.meds import iter_shards
from clin_jepa.data.validate import validate_site
from clin_jepa.errors import ConfigError, DataValidationError


def real_extract(n: int = 30) -> tuple[pd.DataFrame, int]:
    """Test data as a third-party extract has it: WBC in cells/uL, and for every subject that died two
    lab results stamped 2 days after death. Returns the events and the number of late events."""
    ev = random_events(n, seed=3, hours=48)
    wbc = ev["code"] == "LAB//WBC"
    ev.loc[wbc, "numeric_value"] = (ev.loc[wbc, "numeric_value"] * 1000).astype("float32")
    death = ev[ev["code"] == meds.death_code]
    late = pd.concat([death.assign(code="LAB//NA", numeric_value=np.float32(139.0)),
                      death.assign(code="LAB//K", numeric_value=np.float32(4.1))])
    late["time"] = late["time"] + pd.Timedelta(hours=48)
    out = pd.concat([ev, late]).sort_values(["subject_id", "time"], kind="stable").reset_index(drop=True)
    return out, len(late)


def site_yaml(tmp_path: Path, events: pd.DataFrame, wbc: dict, **overrides: object) -> Path:
    data = write_meds(tmp_path / "meds", events)
    code_map = [({**r, **wbc} if r["code"] == "LAB//WBC" else r) for r in CODE_MAP]
    return write_site_config(tmp_path / "site.yaml", data, tmp_path / "state", code_map=code_map, **overrides)


def test_per_microliter_wbc_and_events_after_death_validate_with_drop(tmp_path: Path, capsys) -> None:
    events, n_late = real_extract()
    assert n_late > 0
    strict = site_yaml(tmp_path / "strict", events, {"unit": "/uL"})
    with pytest.raises(DataValidationError, match="more than 24 h after the subject's MEDS_DEATH"):
        validate_site(load_site_config(strict))
    path = site_yaml(tmp_path / "lenient", events, {"unit": "/uL"},
                     data_quality={"events_after_death": "drop"})
    assert main(["validate", str(path)]) == 0
    text = capsys.readouterr().out
    assert "LAB//WBC -> wbc [/uL -> 10^9/L]" in text
    assert "LAB//WBC: [/uL] x 0.001 -> 10^9/L (units library), e.g." in text
    assert f"events_after_death {n_late:,} event(s) dropped" in text
    summary = validate_site(load_site_config(path))
    assert summary.dropped == {"events_after_death": n_late}
    # the source is untouched: the late rows are still in the files, only the reader leaves them out
    cfg = load_site_config(path)
    raw = sum(len(s) for s in iter_shards(cfg.data_path))
    kept = sum(len(harmonize(s, CodeMapper(cfg)).shard) for s in iter_shards(cfg.data_path))
    assert raw == len(events) and kept == raw - n_late


def test_converted_per_microliter_values_equal_the_canonical_ones(tmp_path: Path) -> None:
    events, _ = real_extract(10)
    cfg = load_site_config(site_yaml(tmp_path, events, {"unit": "/uL"},
                                     data_quality={"events_after_death": "drop"}))
    h = harmonize(next(iter_shards(cfg.data_path)), CodeMapper(cfg))
    wbc = h.shard.codes.index("LAB//WBC")
    rows = h.shard.code_index == wbc
    np.testing.assert_allclose(h.value[rows], h.shard.value[rows] / 1000, rtol=1e-12)


def test_declared_scale_and_offset_for_a_unit_no_library_knows(tmp_path: Path, capsys) -> None:
    events = random_events(10, seed=1, hours=48)
    wbc = events["code"] == "LAB//WBC"
    events.loc[wbc, "numeric_value"] = (events.loc[wbc, "numeric_value"] * 4 + 2).astype("float32")
    path = site_yaml(tmp_path, events, {"unit": "cells/ward-box", "scale": 0.25, "offset": -0.5})
    assert main(["validate", str(path)]) == 0
    text = capsys.readouterr().out
    assert "LAB//WBC: [cells/ward-box] x 0.25 - 0.5 -> 10^9/L (declared scale/offset)" in text
    cfg = load_site_config(path)
    h = harmonize(next(iter_shards(cfg.data_path)), CodeMapper(cfg))
    rows = h.shard.code_index == h.shard.codes.index("LAB//WBC")
    np.testing.assert_allclose(h.value[rows], h.shard.value[rows] * 0.25 - 0.5)


def test_unknown_unit_without_scale_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    path = site_yaml(tmp_path, random_events(5, seed=1, hours=48), {"unit": "cells/ward-box"})
    with pytest.raises(DataValidationError, match="declare scale/offset"):
        validate_site(load_site_config(path))


@pytest.mark.parametrize(("rule", "edit", "words"), [
    ("duplicates", lambda ev: pd.concat([ev, ev[ev["code"] == "LAB//NA"].head(7)]), "duplicate event(s)"),
    ("events_before_birth", lambda ev: pd.concat([ev, ev[ev["code"] == meds.birth_code].head(3).assign(
        code="LAB//NA", numeric_value=np.float32(140), time=lambda d: d["time"] - pd.Timedelta(days=1))]),
     "before the subject's MEDS_BIRTH"),
    ("negative_values", lambda ev: pd.concat([ev, ev[ev["code"] == "LAB//NA"].head(4).assign(
        numeric_value=np.float32(-3))]), "negative value(s)"),
    ("out_of_range", lambda ev: pd.concat([ev, ev[ev["code"] == "LAB//K"].head(5).assign(
        numeric_value=np.float32(40))]), "outside the catalog's plausible range"),
])
def test_each_rule_errors_or_drops(tmp_path: Path, rule: str, edit, words: str) -> None:
    base = random_events(12, seed=2, hours=48)
    events = edit(base).sort_values(["subject_id", "time"], kind="stable").reset_index(drop=True)
    added = len(events) - len(base)
    strict = site_yaml(tmp_path / "e", events, {}, data_quality={rule: "error"})
    with pytest.raises(DataValidationError, match=None) as info:
        validate_site(load_site_config(strict))
    assert words in str(info.value) and f"data_quality.{rule}: drop" in str(info.value)
    def dropped(name: str, ev: pd.DataFrame) -> int:
        cfg = load_site_config(site_yaml(tmp_path / name, ev, {}, data_quality={rule: "drop"}))
        return validate_site(cfg).dropped[rule]

    # the random test data already has a few values outside the plausible ranges (SpO2 above 100 %)
    assert dropped("d", events) == added + (dropped("b", base) if rule == "out_of_range" else 0)


def test_stay_key_with_its_own_lengths_and_the_old_icu_stay_key(tmp_path: Path, capsys) -> None:
    from fixtures import END, START

    events = random_events(30, seed=4, hours=48)  # stays of 30-100 h
    old = validate_site(load_site_config(site_yaml(tmp_path / "a", events, {})))
    ward = {"start": START, "end": END, "name": "ward", "min_hours": 60, "context_hours": 12}
    path = site_yaml(tmp_path / "b", events, {}, stay=ward)
    raw = yaml.safe_load(path.read_text())
    del raw["icu_stay"]
    path.write_text(yaml.safe_dump(raw))
    new = validate_site(load_site_config(path))
    assert 0 < new.n_eligible < old.n_eligible == old.n_stays == new.n_stays
    assert main(["validate", str(path)]) == 0
    assert "ward stays (stay: 'ICU//ADMIT' -> 'ICU//DISCHARGE'; used if >= 60 h and alive at 12 h)" in (
        capsys.readouterr().out)
    both = site_yaml(tmp_path / "c", events, {}, stay=ward)
    with pytest.raises(ConfigError, match="exactly one of 'stay'"):
        load_site_config(both)


def test_range_edges_allow_float32_rounding_only() -> None:
    from clin_jepa.data.concepts import load_concepts
    from clin_jepa.data.meds import Shard
    from clin_jepa.data.quality import flag_rows

    fio2 = load_concepts().index("fio2")
    # FiO2 recorded as the fraction 0.21 is stored as float32 and reads back as 20.999999 %
    value = np.array([np.float32(0.21) * 100.0, 20.9, 100.0 + 1e-5, 100.1])
    shard = Shard(Path("x"), np.ones(4, np.int64), np.arange(4, dtype=np.int64), np.zeros(4, np.int32),
                  ["FIO2"], value)
    flags = flag_rows(shard, np.full(4, fio2, np.int16), value, np.zeros(1, bool), np.zeros(1, bool),
                      ("out_of_range",))
    assert flags["out_of_range"].tolist() == [False, True, False, True]
