"""Shared pytest fixtures. Dataset writers live in ``tests/fixtures.py`` (importable as ``fixtures``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fixtures import icu_patient, write_meds, write_site_config  # noqa: E402

from clin_jepa.config import SiteConfig, load_site_config  # noqa: E402


def handmade_rows() -> list[dict]:
    """Five subjects with known stays: 1 survives a 60 h stay, 2 dies at 30 h, 3 has a 10 h stay
    (ineligible), 4 is tuning with a 50 h stay, 5 is held out with two stays (26 h, then 40 h)."""
    return [
        *icu_patient(1, "2021-03-01 08:30", 60, [(0.5, "heart_rate", 90), (25, "creatinine", 2.0),
                                                  (30, "sodium", 140), (1.2, "temperature", 37.5)],
                     treatments=[(2.0, "vasopressor")]),
        *icu_patient(2, "2021-03-02 10:00", 40, [(1, "map", 60), (26, "map", 55)], death_hours=30,
                     birth="1940-06-01"),
        *icu_patient(3, "2021-03-03 00:00", 10, [(1, "heart_rate", 100)]),
        *icu_patient(4, "2021-04-01 00:00", 50, [(3, "wbc", 15), (30, "wbc", 13)]),
        *icu_patient(5, "2021-05-01 00:00", 26, [(1, "platelets", 90)]),
        *icu_patient(5, "2021-05-10 00:00", 40, [(30, "hemoglobin", 7.0)])[1:],  # no second birth row
    ]


HANDMADE_SPLITS = {1: "train", 2: "train", 3: "train", 4: "tuning", 5: "held_out"}


@pytest.fixture
def make_site(tmp_path: Path) -> Callable[..., SiteConfig]:
    """Factory: ``make_site(rows_or_df, splits=None, n_shards=1, name="site", **config_overrides)``
    writes a MEDS dataset and a site config under ``tmp_path/name`` and returns the loaded config."""

    def _make(events: list[dict] | pd.DataFrame, splits: dict[int, str] | None = None, n_shards: int = 1,
              name: str = "site", **overrides: object) -> SiteConfig:
        root = write_meds(tmp_path / name / "meds", events, splits, n_shards=n_shards)
        path = write_site_config(tmp_path / name / "site.yaml", root, tmp_path / name / "state",
                                 site=name, **overrides)
        return load_site_config(path)

    return _make


@pytest.fixture
def handmade_site(make_site: Callable[..., SiteConfig]) -> SiteConfig:
    """The five hand-made subjects of :func:`handmade_rows` as a one-shard-per-split site."""
    return make_site(handmade_rows(), HANDMADE_SPLITS)


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded 2-core machine two OpenMP threads spin against each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
