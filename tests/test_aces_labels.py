"""`clin-jepa labels --aces`: ACES task configs run on a site's harmonized MEDS view give MEDS label files
that agree with clin-jepa's own task definitions, and `evaluate --label-files` probes them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clin_jepa.cli import main
from clin_jepa.config import load_site_config
from clin_jepa.data.harmonize import HOUR_US, CodeMapper, eligible_stay_events, harmonize
from clin_jepa.data.meds import iter_shards
from clin_jepa.data.tasks import compute_labels, load_tasks

pytest.importorskip("aces")

PACKAGED = ["in_icu_mortality", "meds_dev_elevated_creatinine", "meds_dev_hyponatremia"]


def own_labels(config: Path, names: list[str]) -> dict[tuple[int, int], np.ndarray]:
    """``(subject_id, prediction time in us) -> labels`` of clin-jepa's task definitions, eligible stays."""
    cfg = load_site_config(config)
    mapper, tasks, out = CodeMapper(cfg), load_tasks(names=names), {}
    for shard in iter_shards(cfg.data_path):
        _, stays, events = eligible_stay_events(harmonize(shard, mapper), 72)
        labels = compute_labels(tasks, stays, events)
        for i, (s, t) in enumerate(zip(stays.subject, stays.start + 24 * HOUR_US, strict=True)):
            out[int(s), int(t)] = labels[i]
    return out


def label_file(path: Path) -> dict[tuple[int, int], float]:
    table = pq.read_table(path)
    when = table.column("prediction_time").cast("int64").to_pylist()
    return {(s, t): float(v) for s, t, v in zip(table.column("subject_id").to_pylist(), when,
                                                  table.column("boolean_value").to_pylist(), strict=True)}


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("style", ["native", "eicu-meds"])
def test_aces_labels_equal_the_packaged_task_definitions(tmp_path: Path, style: str) -> None:
    # several shards: ACES runs once per view shard (its query mutates the task config: a reused config
    # shifted every later shard's windows by a day, which this comparison caught)
    sites = tmp_path / "sites"
    assert main(["synth", "--out", str(sites), "--sites", "1", "--patients", "120", "--seed", "3",
                 "--subjects-per-shard", "24", "--code-style", style]) == 0
    config = sites / "hospital_a.yaml"
    before = tree_digest(sites / "hospital_a")
    out = tmp_path / "labels"
    assert main(["labels", "--aces", *PACKAGED, "--sites", str(config), "--out", str(out)]) == 0
    assert tree_digest(sites / "hospital_a") == before  # the source data is only read
    ours = own_labels(config, PACKAGED)
    for j, name in enumerate(PACKAGED):
        theirs = label_file(out / f"{name}.parquet")
        defined = {k for k, v in ours.items() if not np.isnan(v[j])}
        assert set(theirs) == defined, name  # the same stays get a label
        assert all(theirs[k] == ours[k][j] for k in defined), name
        assert 0 < sum(theirs.values()) < len(theirs), name  # both classes: the comparison can fail


def test_handmade_stays_get_the_labels_their_story_says(handmade_site, tmp_path: Path) -> None:
    view, out = tmp_path / "view", tmp_path / "labels"
    assert main(["labels", "--aces", *PACKAGED, "--sites", str(handmade_site.source), "--out", str(out),
                 "--view", str(view)]) == 0
    at = lambda s, day: (s, int(np.datetime64(day, "us").astype(np.int64)) + 24 * HOUR_US)  # noqa: E731
    assert label_file(out / "in_icu_mortality.parquet") == {  # subject 3's 10 h stay is not used
        at(1, "2021-03-01T08:30"): 0.0, at(2, "2021-03-02T10:00"): 1.0, at(4, "2021-04-01T00:00"): 0.0,
        at(5, "2021-05-01T00:00"): 0.0, at(5, "2021-05-10T00:00"): 0.0}
    assert label_file(out / "meds_dev_elevated_creatinine.parquet") == {at(1, "2021-03-01T08:30"): 1.0}
    assert label_file(out / "meds_dev_hyponatremia.parquet") == {at(1, "2021-03-01T08:30"): 0.0}
    shard = pq.read_table(view / handmade_site.site / "data" / "train" / "0.parquet").to_pandas()
    one = shard[shard.subject_id == 1]
    assert one.code.tolist()[:3] == ["MEDS_BIRTH", "STAY//START", "heart_rate"]
    creatinine = one[one.code == "creatinine"].numeric_value.tolist()
    assert creatinine == pytest.approx([2.0], rel=1e-6)  # canonical mg/dL, whatever the site records
    two = shard[shard.subject_id == 2]  # death closes the stay before its end code
    assert two[two.code == "STAY//END"].time.tolist() == two[two.code == "MEDS_DEATH"].time.tolist()


def test_bad_task_configs_and_folders_stop_before_writing(handmade_site, tmp_path: Path, capsys) -> None:
    out = tmp_path / "labels"
    site = ["--sites", str(handmade_site.source), "--out", str(out)]
    assert main(["labels", "--aces", "no_such_task", *site]) == 2
    assert "packaged: in_icu_mortality" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("predicates: {a: {code: X}}\n")
    assert main(["labels", "--aces", str(bad), *site]) == 2
    assert "not a usable ACES task config" in capsys.readouterr().err
    twice = ["--sites", str(handmade_site.source), str(handmade_site.source), "--out", str(out)]
    assert main(["labels", "--aces", "in_icu_mortality", *twice]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "old.parquet").write_bytes(b"x")
    assert main(["labels", "--aces", "in_icu_mortality", *site]) == 2
    assert "not an empty folder" in capsys.readouterr().err


@pytest.mark.slow
def test_aces_label_files_are_probed_by_evaluate(tmp_path: Path) -> None:
    sites_dir = tmp_path / "sites"
    assert main(["synth", "--out", str(sites_dir), "--sites", "2", "--patients", "60"]) == 0
    sites = [str(sites_dir / "hospital_a.yaml"), str(sites_dir / "hospital_b.yaml")]
    labels, run, report = tmp_path / "labels", tmp_path / "run", tmp_path / "report"
    assert main(["labels", "--aces", *PACKAGED, "--sites", *sites, "--out", str(labels)]) == 0
    assert main(["train", "--sites", *sites, "--out", str(run), "--steps", "4", "--preset", "tiny",
                 "--hours", "72", "--no-progress"]) == 0
    assert main(["evaluate", str(run / "ckpt.pt"), "--sites", *sites, "--out", str(report), "--no-baselines",
                 "--bootstrap", "0", "--quiet", "--label-files", str(labels)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["data"]["tasks"] == sorted(PACKAGED)
    probes = metrics["models"]["run"]["probes"]["tasks"]
    assert probes["in_icu_mortality"]["n_test"] > 0 and probes["in_icu_mortality"]["auroc"] is not None
