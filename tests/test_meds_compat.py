"""A MEDS dataset written by another MEDS tool (meds-testing-helpers) loads with a suitable site config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from meds_testing_helpers.dataset import MEDSDataset
from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT

from clin_jepa.cli import main
from clin_jepa.config import load_site_config
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.harmonize import CodeMapper, harmonize
from clin_jepa.data.meds import iter_shards
from clin_jepa.data.stats import compute_site_statistics, quantile_edges
from clin_jepa.data.tasks import load_tasks
from clin_jepa.data.tokenize import build_site_tensors
from clin_jepa.data.validate import validate_site

# The sample has ADMISSION//<dept> ... DISCHARGE stays, HR in bpm, TEMP in degF, static EYE_COLOR/HEIGHT rows.
SITE = {
    "site": "meds_sample",
    "data": {"path": "meds"},
    "icu_stay": {"start": "ADMISSION//.*", "end": "DISCHARGE"},
    "code_map": [{"code": "HR", "concept": "heart_rate", "unit": "bpm"},
                 {"code": "TEMP", "concept": "temperature", "unit": "°F"}],
    "ignore_codes": ["EYE_COLOR//.*", "HEIGHT"],
    "state_dir": "state",
}

LONG_STAY = """
data/train/0.parquet: |-
  subject_id,time,code,numeric_value
  1,,EYE_COLOR//BROWN,
  1,"12/28/1950, 00:00:00",MEDS_BIRTH,
  1,"05/11/2010, 17:41:51",ADMISSION//CARDIAC,
  1,"05/11/2010, 17:41:51",HR,102.6
  1,"05/11/2010, 18:10:00",TEMP,98.6
  1,"05/12/2010, 20:00:00",HR,130.0
  1,"05/13/2010, 19:00:00",DISCHARGE,
  2,"01/01/1940, 00:00:00",MEDS_BIRTH,
  2,"06/20/2010, 08:00:00",ADMISSION//PULMONARY,
  2,"06/20/2010, 09:30:00",TEMP,101.3
  2,"06/21/2010, 15:00:00",MEDS_DEATH,
  2,"06/21/2010, 15:00:00",DISCHARGE,
data/held_out/0.parquet: |-
  subject_id,time,code,numeric_value
  3,"02/02/1970, 00:00:00",MEDS_BIRTH,
  3,"03/03/2011, 00:00:00",ADMISSION//ORTHOPEDIC,
  3,"03/03/2011, 02:00:00",HR,70.0
  3,"03/04/2011, 01:00:00",DISCHARGE,
metadata/subject_splits.parquet: |-
  subject_id,split
  1,train
  2,train
  3,held_out
"""


def _materialize(tmp_path: Path, sample: str) -> Path:
    MEDSDataset.from_yaml(sample).write(tmp_path / "meds")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(SITE, allow_unicode=True))
    return path


def test_meds_testing_helpers_sample_validates_and_harmonizes(tmp_path: Path, capsys) -> None:
    cfg = load_site_config(_materialize(tmp_path, SIMPLE_STATIC_SHARDED_BY_SPLIT))
    summary = validate_site(cfg)
    assert summary.n_subjects == 6 and summary.n_files == 4
    assert summary.split_subjects == {"train": 4, "tuning": 1, "held_out": 1}
    assert summary.n_stays == 6 and summary.n_eligible == 0  # every sample stay is shorter than 24 h
    assert summary.unmapped_share == 0.0 and summary.code_concept["TEMP"] == "temperature [°F -> degC]"
    temp = load_concepts().index("temperature")
    for shard in iter_shards(cfg.data_path):
        h = harmonize(shard, CodeMapper(cfg))
        celsius = h.value[h.concept == temp]
        assert len(celsius) and ((celsius > 35) & (celsius < 38.5)).all()  # 95.5-100.4 degF
    stats = compute_site_statistics(cfg)
    assert stats.n_subjects == 4 and stats.counts[load_concepts().index("heart_rate")] == 12
    disc = quantile_edges(stats)
    assert disc.concepts == ("heart_rate", "temperature")
    tensors = build_site_tensors(cfg, disc, load_tasks())
    assert len(tensors) == 0 and tensors.bins.shape == (0, 72, 2) and tensors.labels.shape == (0, 8)
    assert main(["validate", str(cfg.source)]) == 0
    out = capsys.readouterr().out
    assert "6 found, 0 eligible" in out and "note: no eligible ICU stays" in out


def test_meds_tool_written_long_stays_become_tensors(tmp_path: Path) -> None:
    cfg = load_site_config(_materialize(tmp_path, LONG_STAY))
    summary = validate_site(cfg)
    assert summary.n_eligible == 3
    disc = quantile_edges(compute_site_statistics(cfg), n_bins=4)
    tensors = build_site_tensors(cfg, disc, load_tasks())
    assert tensors.subject_id.tolist() == [3, 1, 2] and tensors.split.tolist() == [2, 0, 0]
    assert tensors.mask.sum(1).tolist() == [25, 50, 31]
    hr = tensors.concepts.index("heart_rate")
    assert np.flatnonzero(tensors.bins[1, :, hr]).tolist() == [0, 26]
    mortality = tensors.tasks.index("in_icu_mortality")
    assert tensors.labels[:, mortality].tolist() == [0.0, 0.0, 1.0]
    assert tensors.time[1, 0, 3] == pytest.approx(59.37 / 100, abs=1e-3)
