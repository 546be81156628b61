"""End-to-end federated evaluation: `flwr run` (simulation) of three synthetic hospitals with the default
``eval-every`` (after each phase and the last round); each site's federated AUROC must equal
``clin-jepa evaluate`` of the same checkpoint on that site's data alone, and the trained weights must equal
those of the same run without evaluation rounds (``eval-every = -1``, as the learning benchmark runs)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from deploy_harness import BIN
from flwr_utils import REPO, FlowerSandbox
from mlflow.tracking import MlflowClient

from clin_jepa.checkpoint import load_checkpoint
from clin_jepa.data.tasks import load_tasks
from clin_jepa.tracking import EXPERIMENT, default_uri

pytestmark = pytest.mark.slow

ROUNDS = 5
SITES = ("hospital_a", "hospital_b", "hospital_c")


def test_evaluation_rounds_run_at_every_site_and_match_clin_jepa_evaluate(tmp_path):
    done = subprocess.run([str(BIN / "clin-jepa"), "synth", "--out", str(tmp_path / "data"), "--sites", "3",
                           "--patients", "400", "--seed", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sites = [tmp_path / "data" / f"{s}.yaml" for s in SITES]
    out = tmp_path / "run"
    config = {"preset": "tiny", "num-rounds": ROUNDS, "local-steps": 2, "batch-size": 8,
              "phase-fractions": "0.2,0.2,0.2,0.2,0.2", "site-configs": ",".join(map(str, sites)),
              "checkpoint-dir": str(out), "synth-if-missing": False, "round-timeout": 300.0}
    with FlowerSandbox(tmp_path / "flower") as fl:
        proc = fl.run(REPO, config, num_supernodes=3, timeout=900)
        quiet = fl.run(REPO, {**config, "checkpoint-dir": str(tmp_path / "quiet"), "eval-every": -1},
                       num_supernodes=3, timeout=900)
    assert fl.survivors() == [], "Flower/Ray processes survived the run"
    assert proc.returncode == 0 and "Final checkpoint" in proc.stdout, proc.stdout[-6000:]
    assert quiet.returncode == 0 and "Final checkpoint" in quiet.stdout, quiet.stdout[-6000:]
    # evaluation rounds only read the model: they draw no training randomness and move no weight
    evaluated, skipped = (load_checkpoint(d / "ckpt.pt").weights for d in (out, tmp_path / "quiet"))
    assert evaluated.keys() == skipped.keys()
    for group, tensors in evaluated.items():
        assert tensors.keys() == skipped[group].keys()
        for name, value in tensors.items():
            assert torch.equal(value, skipped[group][name]), f"{group}.{name}"
    assert '"phase": "evaluate"' not in (tmp_path / "quiet" / "metrics.jsonl").read_text()
    # one progress line per round, with the evaluation's AUROC and the time left
    progress = [ln for ln in proc.stdout.splitlines() if "ETA" in ln and "sites accepted" in ln]
    assert len(progress) == ROUNDS and all("eval AUROC" in ln for ln in progress), progress

    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [ln for ln in lines if ln["phase"] == "evaluate"]
    assert [ln["round"] for ln in evals] == list(range(1, ROUNDS + 1))  # one round per phase
    tasks = [t.name for t in load_tasks()]
    for ln in evals:
        assert set(ln["sites"]) == set(SITES) and ln["failed"] == {}
        for entry in [*ln["sites"].values(), ln["aggregate"]]:
            assert set(entry) == {"mean_auroc", "tasks", "displacement_ratio", "drift_abs_late", "n_held_out"}
            assert set(entry["tasks"]) == set(tasks)
            assert all(set(v) == {"auroc", "auprc"} for v in entry["tasks"].values())
        assert ln["aggregate"]["mean_auroc"] is not None

    last = evals[-1]
    compared = 0
    for name, site in zip(SITES, sites, strict=True):
        report = tmp_path / f"eval_{name}"
        ran = subprocess.run([str(BIN / "clin-jepa"), "evaluate", str(out / "ckpt.pt"), "--sites", str(site),
                              "--out", str(report), "--no-baselines", "--bootstrap", "0", "--quiet"],
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr
        central = next(iter(json.loads((report / "metrics.json").read_text())["models"].values()))
        for task, score in central["probes"]["tasks"].items():
            federated = last["sites"][name]["tasks"][task]["auroc"]
            if federated is not None:  # not suppressed by the site's min-patients (default 10)
                assert federated == pytest.approx(score["auroc"], abs=1e-6), (name, task)
                compared += 1
        assert (report / "report.html").exists()
    assert compared >= 6
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and (out / "report.md").exists()

    # the same rounds in the run folder's MLflow store, at the global step of each round
    client = MlflowClient(tracking_uri=default_uri(out))
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "eval/mean_auroc")
    assert [(m.step, m.value) for m in history] == [
        (ln["round"] * 2, pytest.approx(ln["aggregate"]["mean_auroc"])) for ln in evals]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == ROUNDS
