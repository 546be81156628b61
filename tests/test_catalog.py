"""The concept catalog: parsing, a federation's own catalog with one extra concept, and refusals of data,
checkpoints and sites built under another catalog (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures import CODE_MAP, random_events, write_meds, write_site_config

from clin_jepa.checkpoint import load_checkpoint
from clin_jepa.cli import main
from clin_jepa.config import load_site_config
from clin_jepa.data.concepts import catalog_in_use, load_concepts, packaged_catalog, parse_catalog
from clin_jepa.data.stats import compute_site_statistics, quantile_edges
from clin_jepa.data.tasks import load_tasks
from clin_jepa.data.tokenize import tokenize_dataset
from clin_jepa.data.validate import validate_site
from clin_jepa.errors import ClinJepaError, ConfigError

PACKAGED = Path(__file__).resolve().parents[1] / "clin_jepa" / "data" / "concepts.yaml"
CVP = {"name": "cvp", "kind": "measurement", "unit": "mmHg", "range": [0, 40], "nonnegative": True}


def write_catalog(path: Path, extra: list[dict] | None = None, name: str = "federation-x") -> Path:
    """The packaged catalog plus ``extra`` concepts (inserted after the measurements)."""
    raw = yaml.safe_load(PACKAGED.read_text())
    measurements = [c for c in raw["concepts"] if c["kind"] == "measurement"]
    treatments = [c for c in raw["concepts"] if c["kind"] == "treatment"]
    path.write_text(yaml.safe_dump({"name": name, "concepts": measurements + (extra or []) + treatments}))
    return path


def events_with_cvp(n: int, seed: int, first_id: int = 1) -> pd.DataFrame:
    """``random_events`` plus a central venous pressure charted with every heart rate (value / 10)."""
    ev = random_events(n, seed=seed, hours=48, first_id=first_id)
    cvp = ev[ev["code"] == "VITAL//HR"].assign(code="VITAL//CVP")
    cvp["numeric_value"] = (cvp["numeric_value"] / 10).astype("float32")
    return pd.concat([ev, cvp]).sort_values(["subject_id", "time"], kind="stable").reset_index(drop=True)


def cvp_site(root: Path, name: str, seed: int = 0, **overrides: object) -> Path:
    data = write_meds(root / name / "data", events_with_cvp(40, seed, 1 + 1000 * seed))
    code_map = [*CODE_MAP, {"code": "VITAL//CVP", "concept": "cvp", "unit": "mm[Hg]"}]
    return write_site_config(root / f"{name}.yaml", data, root / name / "state", site=name, code_map=code_map,
                             **overrides)


@pytest.mark.parametrize(("concept", "message"), [
    ({"name": "x", "kind": "lab"}, "kind (x): 'lab' is not one of"),
    ({"name": "x", "kind": "measurement", "range": [0, 1]}, "unit (x): a measurement needs"),
    ({"name": "x", "kind": "measurement", "unit": "mg/dL", "range": [5, 1]}, "range (x): expected [lo, hi]"),
    ({"name": "x", "kind": "measurement", "unit": "furlongs", "range": [0, 1]}, "unit (x): unit 'furlongs'"),
    ({"name": "x", "kind": "treatment", "unit": "mg"}, "a treatment has no value"),
    ({"name": "x", "kind": "treatment", "colour": "red"}, "unknown key(s) ['colour']"),
    ({"name": "heart_rate", "kind": "treatment"}, "['heart_rate'] given more than once"),
])
def test_a_malformed_catalog_names_the_entry(concept: dict, message: str) -> None:
    raw = yaml.safe_load(PACKAGED.read_text())
    with pytest.raises(ConfigError, match=None) as info:
        parse_catalog({"name": "bad", "concepts": [*raw["concepts"], concept]}, "bad.yaml")
    assert message in str(info.value) and "bad.yaml" in str(info.value)


def test_packaged_catalog_keeps_the_old_vocabulary_first_and_adds_the_benchmark_variables() -> None:
    table = packaged_catalog()
    assert table.measurement_names[:16] == (
        "heart_rate", "sbp", "map", "resp_rate", "spo2", "temperature", "creatinine", "bun", "sodium",
        "potassium", "bicarbonate", "lactate", "hemoglobin", "wbc", "platelets", "glucose")
    assert set(table.measurement_names[16:]) == {"dbp", "gcs_total", "fio2", "urine_output", "bilirubin",
                                                  "inr", "albumin", "ph"}
    assert table.treatment_names == ("vasopressor", "iv_fluids", "mechanical_ventilation", "antibiotics",
                                     "insulin", "diuretic")


def test_fingerprint_follows_content_not_name(tmp_path: Path) -> None:
    from clin_jepa.data.concepts import read_catalog

    same = read_catalog(write_catalog(tmp_path / "a.yaml", name="renamed"))
    other = read_catalog(write_catalog(tmp_path / "b.yaml", [CVP]))
    assert same.fingerprint() == packaged_catalog().fingerprint()
    assert other.fingerprint() != packaged_catalog().fingerprint() and other.measurement_names[-1] == "cvp"


def test_a_custom_catalog_tokenizes_its_extra_concept_and_refuses_the_packaged_one(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "fed.yaml", [CVP])
    cfg = load_site_config(cvp_site(tmp_path, "site0"))
    with pytest.raises(ClinJepaError, match="unknown concept 'cvp'"):
        validate_site(cfg)  # the packaged catalog has no cvp
    with catalog_in_use(catalog) as table:
        summary = validate_site(cfg)
        assert summary.code_concept["VITAL//CVP"] == "cvp [mm[Hg] -> mmHg]"
        disc = quantile_edges(compute_site_statistics(cfg))
        assert "cvp" in disc.concepts and disc.catalog == table.fingerprint()
        t = tokenize_dataset(cfg, disc, load_tasks(), hours=48)
        col = list(t.concepts).index("cvp")
        assert (t.bins[..., col] > 0).mean() > 0.3  # charted hourly, like heart rate
    with pytest.raises(ClinJepaError, match="built under concept catalog") as info:
        tokenize_dataset(cfg, disc, load_tasks(), hours=48)
    assert "--concepts" in str(info.value)


def test_a_site_that_agreed_to_another_catalog_is_refused(tmp_path: Path) -> None:
    other = write_catalog(tmp_path / "other.yaml", [{**CVP, "range": [0, 30]}])
    catalog = write_catalog(tmp_path / "fed.yaml", [CVP])
    cfg = load_site_config(cvp_site(tmp_path, "site0", concept_catalog=str(other)))
    with catalog_in_use(catalog), pytest.raises(ClinJepaError, match="site site0 agreed to concept catalog"):
        compute_site_statistics(cfg)


def test_train_and_evaluate_with_concepts_and_a_refusal_without(tmp_path: Path, capsys) -> None:
    catalog = write_catalog(tmp_path / "fed.yaml", [CVP])
    site = cvp_site(tmp_path, "site0")
    out = tmp_path / "run"
    assert main(["train", "--sites", str(site), "--out", str(out), "--steps", "2", "--preset", "tiny",
                 "--hours", "48", "--no-progress", "--concepts", str(catalog)]) == 0
    disc = load_checkpoint(out / "ckpt.pt").load_discretization()
    assert disc is not None and "cvp" in disc.concepts
    capsys.readouterr()
    rc = main(["evaluate", str(out / "ckpt.pt"), "--sites", str(site), "--out", str(tmp_path / "ev"),
               "--no-baselines", "--bootstrap", "0", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "built under concept catalog" in err and "Traceback" not in err
    assert not (tmp_path / "ev" / "metrics.json").exists()
    # the command's --concepts ended with it: this process is back on the packaged catalog
    assert load_concepts().fingerprint() == packaged_catalog().fingerprint()
