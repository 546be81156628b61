"""MEDS-DEV threshold variants of the 8 tasks, selectable by name (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import icu_patient

from clin_jepa.data.harmonize import CodeMapper, eligible_stay_events, harmonize
from clin_jepa.data.meds import iter_shards
from clin_jepa.data.tasks import compute_labels, load_tasks
from clin_jepa.errors import ConfigError

MEDS_DEV = {
    "meds_dev_elevated_creatinine": ("creatinine", ">", 1.3), "meds_dev_anemia": ("hemoglobin", "<", 13),
    "meds_dev_hyponatremia": ("sodium", "<", 135), "meds_dev_metabolic_acidosis": ("bicarbonate", "<", 22),
    "meds_dev_leukocytosis": ("wbc", ">", 11), "meds_dev_thrombocytopenia": ("platelets", "<", 150),
    "meds_dev_hypotension": ("map", "<", 65),
}


def test_variants_are_selectable_by_name_beside_the_default_tasks() -> None:
    assert all(not t.name.startswith("meds_dev") for t in load_tasks())  # the default set is unchanged
    names = [*MEDS_DEV, "in_icu_mortality"]
    specs = load_tasks(names=names)
    assert [s.name for s in specs] == names
    for s in specs[:-1]:
        assert (s.concept, s.op, s.value) == MEDS_DEV[s.name]
        assert s.window == (24.0, 48.0) and s.exclude_if_abnormal_before == "any"
    with pytest.raises(ConfigError, match="meds_dev_anemia"):
        load_tasks(names=["meds_dev_anaemia"])


def test_any_earlier_abnormal_value_excludes_where_the_last_value_rule_keeps(make_site) -> None:
    # hemoglobin 12 (abnormal for both) at 2 h, 14 at 10 h (normal), 12 at 30 h (in the window)
    rows = icu_patient(1, "2021-01-01", 60, [(2, "hemoglobin", 12.0), (10, "hemoglobin", 14.0),
                                             (30, "hemoglobin", 12.0)])
    rows += icu_patient(2, "2021-02-01", 60, [(10, "hemoglobin", 14.0), (30, "hemoglobin", 12.0)])
    cfg = make_site(rows)
    h = harmonize(next(iter_shards(cfg.data_path)), CodeMapper(cfg))
    _, stays, ev = eligible_stay_events(h, 48)
    specs = load_tasks(names=["meds_dev_anemia"])
    last_rule = specs[0].__class__(**{**specs[0].to_dict(), "name": "last", "window": (24.0, 48.0),
                                      "exclude_if_abnormal_before": True})
    labels = compute_labels((specs[0], last_rule), stays, ev)
    np.testing.assert_array_equal(labels[:, 0], [np.nan, 1.0])  # MEDS-DEV: excluded after any low value
    np.testing.assert_array_equal(labels[:, 1], [1.0, 1.0])  # last value before the window was normal
