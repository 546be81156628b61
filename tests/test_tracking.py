"""MLflow tracking: `clin-jepa train` logs its records to a local store in the run folder under the names
federated runs use, and a store that cannot be written never stops training."""

from __future__ import annotations

import json

import pytest
from fixtures import random_events, write_meds, write_site_config
from mlflow.tracking import MlflowClient

from clin_jepa.cli import main as cli
from clin_jepa.tracking import EXPERIMENT, default_uri, federated_metrics


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    data = write_meds(root / "data", random_events(24, seed=1, hours=48))
    return write_site_config(root / "site.yaml", data, root / "state", site="site_t")


def _train(site, out, *extra):
    return cli(["train", "--sites", str(site), "--out", str(out), "--preset", "tiny", "--steps", "4",
                "--log-every", "2", "--batch-size", "4", "--hours", "48", "--no-progress", *extra])


def test_centralized_run_is_tracked_in_its_folder(site, tmp_path):
    out = tmp_path / "run"
    assert _train(site, out) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    client = MlflowClient(tracking_uri=default_uri(out))
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in records]
    assert runs[0].data.params["preset"] == "tiny"


def test_a_store_that_cannot_be_written_does_not_stop_training(site, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder would go")
    out = tmp_path / "run"
    assert _train(site, out, "--tracking-uri", f"sqlite:///{blocker}/mlflow.db") == 0
    assert (out / "ckpt.pt").exists() and len((out / "metrics.jsonl").read_text().splitlines()) == 2
    err = capsys.readouterr().err
    assert "MLflow tracking" in err and "off for the rest of this run" in err
    assert not (out / "mlflow").exists()


def test_tracking_off_writes_no_store(site, tmp_path):
    assert _train(site, tmp_path / "run", "--tracking-uri", "off") == 0
    assert not (tmp_path / "run" / "mlflow").exists()


def test_federated_lines_use_the_centralized_names():
    train = {"round": 3, "phase": "joint", "aggregate": {"loss": 0.5}, "accepted": 2, "round_time_s": 1.0,
             "sites": {"a": {"loss": 0.4, "status": "ok", "groups_up": ["encoder"], "dp-epsilon": 1.5}}}
    metrics = federated_metrics(train)
    assert metrics["train/loss"] == 0.5 and metrics["site/a/loss"] == 0.4
    assert metrics["site/a/dp-epsilon"] == 1.5
    assert "site/a/status" not in metrics and metrics["train/accepted"] == 2
    evaluation = {"round": 3, "phase": "evaluate",
                  "aggregate": {"mean_auroc": 0.7, "tasks": {"x": {"auroc": None}}},
                  "sites": {"a": {"mean_auroc": 0.7, "tasks": {"x": {"auroc": 0.6}}}}}
    metrics = federated_metrics(evaluation)
    assert metrics == {"eval/mean_auroc": 0.7, "eval/a/mean_auroc": 0.7, "eval/a/tasks/x/auroc": 0.6}
