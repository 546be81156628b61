"""Small-cell suppression: metrics over fewer than min-patients patients never leave the site."""

from __future__ import annotations

import pytest

from clin_jepa.errors import ConfigError
from clin_jepa.security.disclosure import DEFAULT_MIN_PATIENTS, min_patients_from, suppress_small_aggregates

METRICS = {"num-examples": 64.0, "loss": 1.7, "monitor-eff_rank": 12.0, "dp-epsilon": 0.8}
KEPT = {"num-examples", "dp-epsilon"}


@pytest.mark.parametrize(("n", "k", "kept"), [(10, 10, set(METRICS)), (50, 10, set(METRICS)),
                                              (9, 10, KEPT), (0, 1, KEPT)])
def test_suppression_threshold(n, k, kept):
    out = suppress_small_aggregates(METRICS, n, k)
    assert set(out) == kept
    assert all(out[key] == METRICS[key] for key in out)


def test_node_config_threshold():
    assert min_patients_from({}) == DEFAULT_MIN_PATIENTS
    assert min_patients_from({"min-patients": 25}) == 25
    assert min_patients_from({"min-patients": "30"}) == 30
    for bad in (0, -3, 2.5, "ten", True):
        with pytest.raises(ConfigError, match="min-patients"):
            min_patients_from({"min-patients": bad})
