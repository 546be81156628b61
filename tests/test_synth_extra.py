"""`clin-jepa synth --extra-concepts`: the catalog's eight newer measurements, opt-in, driven by the hidden
physiology; without the option the generator writes what it wrote before the option existed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from clin_jepa.cli import main
from clin_jepa.config import load_site_config
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.harmonize import CodeMapper, harmonize
from clin_jepa.data.meds import iter_shards
from clin_jepa.data.synth import _with_extra_concepts, hospital_profiles, simulate_site
from clin_jepa.data.synth.extra import EXTRA_MEASUREMENTS
from clin_jepa.data.synth.physiology import SYSTEMS, TREATMENTS

# `clin-jepa synth --sites 3 --patients 20 --seed 0` at commit 3e87730, before --extra-concepts existed
# (file bytes sha256 9ec9dbf2...; the digest below reads the tables, so a pyarrow upgrade that changes
# only parquet's writer metadata keeps it).
DEFAULT_DIGEST = "78575842c8b37d9684febe98fcec3b8012bdca92b725b3152bf8ae2dcba20698"


def content_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.suffix == ".parquet":
            t = pq.read_table(p)
            h.update(str(t.schema.remove_metadata()).encode() + repr(t.to_pydict()).encode())
        elif p.name == "dataset.json":  # package versions are not the generator's output
            info = json.loads(p.read_text())
            info.pop("etl_version")
            info.pop("meds_version")
            h.update(json.dumps(info, sort_keys=True).encode())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def test_default_output_is_unchanged(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path), "--sites", "3", "--patients", "20", "--seed", "0"]) == 0
    assert content_digest(tmp_path) == DEFAULT_DIGEST


def test_extra_concepts_add_events_and_leave_the_rest_as_it_was(tmp_path: Path) -> None:
    plain, extra = tmp_path / "plain", tmp_path / "extra"
    assert main(["synth", "--out", str(plain), "--sites", "2", "--patients", "30"]) == 0
    assert main(["synth", "--out", str(extra), "--sites", "2", "--patients", "30", "--extra-concepts"]) == 0
    for site in ("hospital_a", "hospital_b"):
        old = pq.read_table(plain / site / "metadata" / "subject_splits.parquet")
        assert pq.read_table(extra / site / "metadata" / "subject_splits.parquet").equals(old)
        config = yaml.safe_load((extra / f"{site}.yaml").read_text())
        mapped = [e["concept"] for e in config["code_map"]]
        assert set(EXTRA_MEASUREMENTS) <= set(mapped), site
    urine = [e for e in yaml.safe_load((extra / "hospital_b.yaml").read_text())["code_map"]
             if e["concept"] == "urine_output"]
    assert urine == [{"code": "ITEM//226559", "concept": "urine_output", "unit": "mL", "scale": 1.0}]
    assert main(["synth", "--out", str(tmp_path / "x"), "--extra-concepts", "--code-style", "eicu-meds"]) == 2


def test_extra_concepts_follow_the_hidden_state() -> None:
    profile = hospital_profiles(1)[0]
    h = _with_extra_concepts(simulate_site(profile, 0, 400, 5), 5, 0)
    e = h.extra
    hour = np.minimum(e.hour.astype(int), h.course.state.shape[1] - 1)
    state, vent = h.course.state[e.stay, hour], h.course.treat[e.stay, hour, TREATMENTS.index(
        "mechanical_ventilation")]

    def values(name: str) -> np.ndarray:
        return e.concept == EXTRA_MEASUREMENTS.index(name)

    renal, acid = state[:, SYSTEMS.index("renal")], state[:, SYSTEMS.index("acid_base")]
    u = values("urine_output")
    assert np.median(e.value[u & (renal > 0.5)]) < 0.6 * np.median(e.value[u & (renal < 0.1)])
    g = values("gcs_total")
    assert e.value[g & vent].mean() < e.value[g & ~vent].mean() - 3
    p = values("ph")
    assert e.value[p & (acid > 0.5)].mean() < e.value[p & (acid < 0.1)].mean() - 0.04
    f = values("fio2")
    assert e.value[f & vent].mean() > e.value[f & ~vent].mean() + 10
    for name in EXTRA_MEASUREMENTS:  # every value inside the catalog's plausible range
        c = load_concepts().get(name)
        v = e.value[values(name)]
        assert len(v) > 100 and v.min() >= c.lo and v.max() <= c.hi, name


@pytest.mark.slow
def test_extra_concepts_validate_and_train(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sites"
    assert main(["synth", "--out", str(out), "--sites", "3", "--patients", "60", "--extra-concepts"]) == 0
    sites = [str(out / f"hospital_{s}.yaml") for s in "abc"]
    for s in sites:  # values arrive in range after each site's units (fraction, umol/L, g/L, declared mL)
        raw = yaml.safe_load(Path(s).read_text())
        raw["data_quality"] = {"out_of_range": "error"}
        Path(s).write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["validate", *sites]) == 0
    text = capsys.readouterr().out
    assert "LABOR//BILIRUBIN: [umol/L] x 0.058466 -> mg/dL" in text
    for s in sites:
        cfg = load_site_config(s)
        mapper = CodeMapper(cfg)
        seen = np.unique(np.concatenate([harmonize(sh, mapper).concept for sh in iter_shards(cfg.data_path)]))
        names = {load_concepts().names[i] for i in seen if i >= 0}
        assert set(EXTRA_MEASUREMENTS) <= names, s
    run = tmp_path / "run"
    assert main(["train", "--sites", *sites, "--out", str(run), "--steps", "4", "--preset", "tiny",
                 "--hours", "72", "--no-progress"]) == 0
    assert (run / "ckpt.pt").is_file()
