"""`clin-jepa synth --code-style`: synthetic hospitals coded as the MIMIC-IV-MEDS and eICU-MEDS ETLs write
them, read with the shipped site_configs/examples/ configs: validate -> train a few steps -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import meds
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from clin_jepa.cli import main
from clin_jepa.config import load_site_config
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.harmonize import CodeMapper, harmonize
from clin_jepa.data.meds import iter_shards

EXAMPLES = Path(__file__).resolve().parents[1] / "site_configs" / "examples"


def canonical_values(config: Path) -> dict[int, np.ndarray]:
    """Every canonical measurement value of a site, sorted, per concept index."""
    cfg = load_site_config(config)
    mapper = CodeMapper(cfg)
    parts = [harmonize(s, mapper) for s in iter_shards(cfg.data_path)]
    concept = np.concatenate([h.concept for h in parts])
    value = np.concatenate([h.value for h in parts])
    n_measurements = len(load_concepts().measurements)
    return {int(c): np.sort(value[concept == c]) for c in np.unique(concept[np.isfinite(value)])
            if 0 <= c < n_measurements}


@pytest.mark.parametrize("style", ["mimic-iv-meds", "eicu-meds"])
def test_recoded_hospital_carries_the_same_values_in_the_etl_codes(tmp_path: Path, style: str) -> None:
    native, styled = tmp_path / "native", tmp_path / "styled"
    assert main(["synth", "--out", str(native), "--sites", "1", "--patients", "30"]) == 0
    assert main(["synth", "--out", str(styled), "--sites", "1", "--patients", "30",
                 "--code-style", style]) == 0
    written = yaml.safe_load((styled / "hospital_a.yaml").read_text())
    shipped = yaml.safe_load((EXAMPLES / f"{style.replace('-', '_')}.yaml").read_text())
    for key in ("stay", "code_map", "ignore_codes", "data_quality", "max_unmapped_share"):
        assert written[key] == shipped[key], key  # the shipped config itself, only paths changed
    a, b = canonical_values(native / "hospital_a.yaml"), canonical_values(styled / "hospital_a.yaml")
    assert a.keys() == b.keys() and len(a) == 16
    for c in a:
        np.testing.assert_allclose(b[c], a[c], rtol=2e-6, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("style", ["mimic-iv-meds", "eicu-meds"])
def test_shipped_config_validates_trains_and_evaluates(tmp_path: Path, style: str, capsys) -> None:
    out = tmp_path / "sites"
    assert main(["synth", "--out", str(out), "--sites", "2", "--patients", "60", "--code-style", style]) == 0
    sites = [str(out / "hospital_a.yaml"), str(out / "hospital_b.yaml")]
    assert main(["validate", *sites]) == 0
    text = capsys.readouterr().out
    assert "unmapped codes" in text and "stays: icu stays (stay: 'ICU_ADMISSION//.*'" in text
    run = tmp_path / "run"
    assert main(["train", "--sites", *sites, "--out", str(run), "--steps", "4", "--preset", "tiny",
                 "--hours", "72", "--no-progress"]) == 0
    report = tmp_path / "report"
    # the eICU run also probes MEDS-DEV threshold variants, chosen by name
    tasks = ["meds_dev_anemia", "meds_dev_hypotension", "in_icu_mortality"] if style == "eicu-meds" else []
    assert main(["evaluate", str(run / "ckpt.pt"), "--sites", *sites, "--out", str(report), "--no-baselines",
                 "--bootstrap", "0", "--quiet", *(["--tasks", *tasks] if tasks else [])]) == 0
    if tasks:
        assert json.loads((report / "metrics.json").read_text())["data"]["tasks"] == tasks
    md = (report / "report.md").read_text()
    label = pq.read_table(report / "labels" / "in_icu_mortality.parquet")
    pred = pq.read_table(report / "predictions" / "run" / "in_icu_mortality.parquet")
    assert label.schema.names == ["subject_id", "prediction_time", "boolean_value"]
    want = meds.LabelSchema.schema().field("prediction_time").type
    assert label.schema.field("prediction_time").type == want
    assert pred.schema.names[-2:] == ["predicted_boolean_value", "predicted_boolean_probability"]
    assert 0 < pred.num_rows <= label.num_rows
    if not tasks:  # the label files read back in place of the task definitions give the same probes
        again = tmp_path / "again"
        assert main(["evaluate", str(run / "ckpt.pt"), "--sites", *sites, "--out", str(again),
                     "--no-baselines", "--bootstrap", "0", "--quiet", "--label-files",
                     str(report / "labels")]) == 0
        first, second = (json.loads((d / "metrics.json").read_text())["models"]["run"]["probes"]["tasks"]
                         for d in (report, again))
        assert first.keys() == second.keys() and len(first) == 8
        for t in first:
            assert (second[t]["n_test"], second[t]["auroc"]) == (first[t]["n_test"], first[t]["auroc"]), t
    assert "Stay definition at hospital_a: icu stays (stay: 'ICU_ADMISSION//.*'" in md
    assert (report / "metrics.json").is_file()


def test_malformed_label_files_are_refused_naming_each(tmp_path: Path) -> None:
    import pyarrow as pa

    from clin_jepa.data.stats import Discretization
    from clin_jepa.data.tokenize import SiteTensors
    from clin_jepa.errors import DataValidationError
    from clin_jepa.evaluation.predictions import attach_label_files

    pq.write_table(pa.table({"subject_id": [1], "prediction_time": ["2020-01-01"], "boolean_value": [True]}),
                   tmp_path / "x.parquet")
    pq.write_table(pa.table({"subject_id": [1], "label": [True]}), tmp_path / "y.parquet")
    empty = SiteTensors.empty(Discretization((), (), 10, {}), (), 72, "s")
    with pytest.raises(DataValidationError) as info:
        attach_label_files(empty, tmp_path, 24)
    text = str(info.value)
    assert "x.parquet: columns {'prediction_time': 'string'}" in text and "y.parquet" in text
