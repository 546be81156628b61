"""Task declarations and labels on hand-made patients with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures import icu_patient

from clin_jepa.data.stats import Discretization
from clin_jepa.data.tasks import load_tasks
from clin_jepa.data.tokenize import tokenize_dataset
from clin_jepa.errors import ConfigError

NAN = np.nan
TASKS = ("abnormal_creatinine", "anemia", "hyponatremia", "hypotension", "in_icu_mortality", "leukocytosis",
         "metabolic_acidosis", "thrombocytopenia")
DISC = Discretization((), ("vasopressor",), 10, {})


def _labels(cfg, tasks=None) -> tuple[np.ndarray, np.ndarray]:
    t = tokenize_dataset(cfg, DISC, tasks or load_tasks())
    return t.subject_id, t.labels


def test_the_eight_packaged_tasks() -> None:
    specs = load_tasks()
    assert tuple(s.name for s in specs) == TASKS
    by = {s.name: s for s in specs}
    hypo = by["hyponatremia"]
    assert (hypo.concept, hypo.op, hypo.value) == ("sodium", "<", 135)
    assert by["in_icu_mortality"].kind == "death" and by["in_icu_mortality"].window == (24.0, None)
    assert all(s.window == (24.0, 48.0) for s in specs if s.kind == "threshold")
    assert all(s.exclude_if_abnormal_before == (s.kind == "threshold") for s in specs)  # incident tasks


def test_labels_of_the_handmade_cohort(handmade_site) -> None:
    subjects, labels = _labels(handmade_site)
    expected = {  # rows: 5 (26 h stay), 5 (second stay), 1, 2, 4 -- columns in TASKS order
        0: [NAN, NAN, NAN, NAN, 0, NAN, NAN, NAN],  # platelets 90 at 1 h is context, not the window
        1: [NAN, 1, NAN, NAN, 0, NAN, NAN, NAN],  # hemoglobin 7.0 g/dL at 30 h
        2: [1, NAN, 0, NAN, 0, NAN, NAN, NAN],  # creatinine 2.0 at 25 h, sodium 140 at 30 h
        3: [NAN, NAN, NAN, NAN, 1, NAN, NAN, NAN],  # MAP 55 at 26 h but 60 at 1 h: not new; dies at 30 h
        4: [NAN, NAN, NAN, NAN, 0, NAN, NAN, NAN],  # WBC 13 at 30 h, but already 15 at 3 h: not new
    }
    assert subjects.tolist() == [5, 5, 1, 2, 4]
    for row, want in expected.items():
        np.testing.assert_array_equal(labels[row], np.array(want, np.float32), err_msg=f"row {row}")


@pytest.mark.parametrize(("events", "task", "want"), [
    ([(30, "sodium", 135.0)], "hyponatremia", 0.0),  # strict: exactly the threshold does not cross
    ([(30, "sodium", 134.9)], "hyponatremia", 1.0),
    ([(24, "sodium", 120.0)], "hyponatremia", NAN),  # the window is (24 h, 48 h]: 24 h is prediction time
    ([(48, "sodium", 120.0)], "hyponatremia", 1.0),
    ([(48.1, "sodium", 120.0)], "hyponatremia", NAN),
    ([(30, "sodium", 140.0), (40, "sodium", 130.0)], "hyponatremia", 1.0),  # any crossing counts
    ([(30, "creatinine", 1.47)], "abnormal_creatinine", 0.0),  # recorded as 130 umol/L
    ([(30, "creatinine", 1.58)], "abnormal_creatinine", 1.0),  # recorded as 140 umol/L
    ([(30, "bicarbonate", 19.0)], "metabolic_acidosis", 1.0),
    ([(30, "platelets", 149.0)], "thrombocytopenia", 1.0),
    ([(30, "wbc", 12.0)], "leukocytosis", 0.0),
    ([(30, "map", 64.0)], "hypotension", 1.0),
    ([(45, "hemoglobin", 7.9)], "anemia", 1.0),  # after the 40 h discharge: labs still define the label
])
def test_threshold_label_edges(make_site, events, task, want) -> None:
    cfg = make_site(icu_patient(1, "2021-01-01", 40, events))
    _, labels = _labels(cfg)
    np.testing.assert_array_equal(labels[0, TASKS.index(task)], np.float32(want))


@pytest.mark.parametrize(("events", "want"), [
    ([(3, "sodium", 130.0), (30, "sodium", 131.0)], NAN),  # already low at prediction time: not incident
    ([(3, "sodium", 130.0), (20, "sodium", 139.0), (30, "sodium", 131.0)], 1.0),  # corrected, then new
    ([(3, "sodium", 139.0), (20, "sodium", 132.0), (30, "sodium", 140.0)], NAN),  # the LAST value decides
    ([(3, "sodium", 139.0), (30, "sodium", 131.0)], 1.0),  # normal before, low after: a new hyponatremia
    ([(3, "sodium", 139.0), (30, "sodium", 137.0)], 0.0),
    ([(3, "sodium", 135.0), (30, "sodium", 130.0)], 1.0),  # exactly the threshold does not cross
    ([(24, "sodium", 130.0), (30, "sodium", 131.0)], NAN),  # 24 h is prediction time: still "before"
    ([(3, "potassium", 3.0), (30, "sodium", 130.0)], 1.0),  # no sodium before: the label stands
    ([(3, "sodium", 130.0)], NAN),
])
def test_incident_threshold_tasks_leave_out_stays_already_abnormal(make_site, events, want) -> None:
    cfg = make_site(icu_patient(1, "2021-01-01", 40, events))
    _, labels = _labels(cfg)
    np.testing.assert_array_equal(labels[0, TASKS.index("hyponatremia")], np.float32(want))


def test_exclusion_is_per_stay_and_per_task(tmp_path: Path, make_site) -> None:
    """Two stays in one shard (one already abnormal, one not) and the same task with the option off."""
    base = {"name": "low_na", "kind": "threshold", "concept": "sodium", "op": "<", "value": 135,
            "window": [24, 48]}
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.yaml").write_text(yaml.safe_dump(base | {"exclude_if_abnormal_before": True}))
    (tmp_path / "t" / "b.yaml").write_text(yaml.safe_dump(base | {"name": "low_na_any"}))
    tasks = load_tasks(tmp_path / "t")
    assert [t.exclude_if_abnormal_before for t in tasks] == [True, False]
    cfg = make_site(icu_patient(1, "2021-01-01", 40, [(5, "sodium", 128.0), (30, "sodium", 130.0)])
                    + icu_patient(2, "2021-01-01", 40, [(5, "sodium", 140.0), (30, "sodium", 130.0)]))
    subjects, labels = _labels(cfg, tasks)
    assert subjects.tolist() == [1, 2]
    np.testing.assert_array_equal(labels, np.array([[NAN, 1.0], [1.0, 1.0]], np.float32))


@pytest.mark.parametrize(("stay_h", "death_h", "rows", "dead"), [
    (40, 30, 1, 1.0),  # dies in the ICU after prediction time
    (40, 24, 0, None),  # dead at prediction time: not an eligible stay
    (30, 60, 1, 0.0),  # dies after leaving the ICU
    (30, 30, 1, 1.0),  # discharge stamped at the death time
    (None, 50, 1, 1.0),  # no end code: the stay runs until death
])
def test_in_icu_mortality(make_site, stay_h, death_h, rows, dead) -> None:
    cfg = make_site(icu_patient(1, "2021-01-01", stay_h, [(1, "heart_rate", 80)], death_hours=death_h))
    _, labels = _labels(cfg)
    assert len(labels) == rows
    if rows:
        assert labels[0, TASKS.index("in_icu_mortality")] == dead


def test_tasks_are_declared_not_hard_coded(tmp_path: Path, make_site) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "hyperkalemia.yaml").write_text(yaml.safe_dump(
        {"name": "hyperkalemia", "kind": "threshold", "concept": "potassium", "op": ">", "value": 5.5,
         "window": [0, 12]}))
    tasks = load_tasks(tmp_path / "t")
    cfg = make_site(icu_patient(1, "2021-01-01", 30, [(2, "potassium", 6.1), (20, "potassium", 4.0)]))
    _, labels = _labels(cfg, tasks)
    assert labels.tolist() == [[1.0]]
    assert [t.name for t in load_tasks(names=["hypotension", "anemia"])] == ["hypotension", "anemia"]


@pytest.mark.parametrize(("raw", "message"), [
    ({"name": "x", "kind": "lab", "window": [24, 48]}, "kind: 'lab' is not one of ['death', 'threshold']"),
    ({"name": "x", "kind": "threshold", "concept": "sodium", "op": "<=", "value": 1, "window": [24, 48]},
     "op: '<=' is not one of ['<', '>']"),
    ({"name": "x", "kind": "threshold", "concept": "natrium", "op": "<", "value": 1, "window": [24, 48]},
     "concept: 'natrium' is not a measurement concept; allowed: heart_rate"),
    ({"name": "x", "kind": "threshold", "concept": "sodium", "op": "<", "value": "low", "window": [24, 48]},
     "value: expected a number"),
    ({"name": "x", "kind": "threshold", "concept": "sodium", "op": "<", "value": 1, "window": [48, 24]},
     "window: expected [from_hours, to_hours]"),
    ({"name": "x", "kind": "threshold", "concept": "sodium", "op": "<", "value": 1, "window": [24, None]},
     "an open end (null) is only allowed for kind death"),
    ({"name": "x", "kind": "death", "window": [24, None], "horizon": 3}, "unknown key(s) ['horizon']"),
    ({"name": "x", "kind": "threshold", "concept": "sodium", "op": "<", "value": 1, "window": [24, 48],
      "exclude_if_abnormal_before": "yes"}, "exclude_if_abnormal_before: expected true, false or any"),
    ({"name": "x", "kind": "death", "window": [24, None], "exclude_if_abnormal_before": True},
     "exclude_if_abnormal_before: only allowed for kind threshold"),
])
def test_invalid_task_files_name_the_key_and_allowed_values(tmp_path: Path, raw, message) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_tasks(tmp_path)
    assert "bad.yaml" in str(info.value) and message in str(info.value)


def test_unknown_task_name_is_reported() -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        load_tasks(names=["sepsis"])
