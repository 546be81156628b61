"""Experiment tracking with MLflow: every metrics line of a run, federated or centralized, as MLflow metrics.

Where: ``<run folder>/mlflow/mlflow.db`` (a local SQLite store: MLflow's supported local backend, no server
to start) unless a tracking URI is given (``tracking-uri`` run config / ``clin-jepa train --tracking-uri``;
``off`` = no tracking). Open it with ``mlflow ui --backend-store-uri sqlite:///<run folder>/mlflow/mlflow.db``
(``pip install mlflow``: the project itself depends on ``mlflow-skinny``, the client without the UI).

Names, so centralized and federated runs sit side by side: ``train/<metric>`` at the global optimizer step
for the (aggregate) training metrics, ``site/<site>/<metric>`` per site, ``eval/<metric>`` and
``eval/<site>/<metric>`` for federated evaluation rounds, ``privacy/…`` for ε. A resumed run continues the
MLflow run with the same ``clin_jepa_run`` tag.

Tracking never stops training: the first failure (store unreachable, disk full, bad URI) is reported once
as a warning and the tracker switches itself off for the rest of the run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

OFF = "off"
EXPERIMENT = "clin-jepa"
RUN_TAG = "clin_jepa_run"
MAX_BATCH, MAX_PARAMS = 1000, 100  # MLflow's limits on metrics and params per log_batch call


def default_uri(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / 'mlflow' / 'mlflow.db').resolve()}"


def flatten(prefix: str, value: Any, out: dict[str, float] | None = None) -> dict[str, float]:
    """Numeric leaves of nested dicts as ``prefix/key/...`` -> float (None, text, NaN/inf left out)."""
    out = {} if out is None else out
    if isinstance(value, Mapping):
        for k, v in value.items():
            flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool):
        out[prefix] = float(value)
    elif isinstance(value, int | float) and math.isfinite(value):
        out[prefix] = float(value)
    return out


def settings(value: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A run's settings (nested dicts) as MLflow params: ``a/b`` -> text."""
    out: dict[str, str] = {}
    for k, v in value.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        out.update(settings(v, key) if isinstance(v, Mapping) else {key: str(v)})
    return out


def federated_metrics(line: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of one federated ``metrics.jsonl`` line (a training or an evaluation round)."""
    if line.get("phase") == "evaluate":
        metrics = flatten("eval", line["aggregate"])
        for site, entry in line.get("sites", {}).items():
            flatten(f"eval/{site}", entry, metrics)
        return metrics
    metrics = flatten("train", line.get("aggregate", {}))
    for key in ("accepted", "round_time_s", "wait_s", "target_gap"):
        flatten(f"train/{key}", line.get(key), metrics)
    for site, entry in line.get("sites", {}).items():
        flatten(f"site/{site}", {k: v for k, v in entry.items() if k != "groups_up"}, metrics)
    flatten("privacy", line.get("privacy", {}), metrics)
    metrics["round"] = float(line["round"])
    return metrics


def centralized_metrics(record: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, metrics) of one ``clin-jepa train`` record, under the names federated runs use."""
    return int(record["step"]), flatten("train", {k: v for k, v in record.items() if k != "step"})


class Tracker:
    """One MLflow run, opened at the first :meth:`log` (a run refused before its first record leaves no
    store behind); :meth:`log` and :meth:`close` never raise."""

    def __init__(self, uri: str, run_dir: Path, run_id: str, run_name: str, params: Mapping[str, Any],
                 warn: Callable[[str], None] | None = None) -> None:
        self.warn = warn or (lambda text: warnings.warn(text, stacklevel=2))
        self.uri = default_uri(run_dir) if not uri else uri
        self.client: Any = None
        self.run: str | None = None
        self._pending: tuple[Any, ...] | None = None if uri == OFF else (run_dir, run_id, run_name, params)

    def _open(self, run_dir: Path, run_id: str, run_name: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        exp_id = experiment.experiment_id if experiment else client.create_experiment(
            EXPERIMENT, artifact_location=(Path(run_dir) / "mlflow" / "artifacts").resolve().as_uri())
        found = client.search_runs([exp_id], filter_string=f"tags.{RUN_TAG} = '{run_id}'", max_results=1)
        if found:
            self.run = found[0].info.run_id
            client.update_run(self.run, status="RUNNING")
        else:
            self.run = client.create_run(exp_id, run_name=run_name, tags={RUN_TAG: run_id}).info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), MAX_PARAMS):
                client.log_batch(self.run, params=items[i:i + MAX_PARAMS])
        self.client = client

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # any failure of the store (network, disk, schema) must not stop training
            self.warn(f"MLflow tracking at {self.uri} failed and is off for the rest of this run: "
                      f"{type(exc).__name__}: {exc}")
            self.client = None

    @property
    def active(self) -> bool:
        return self.client is not None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._guard(self._open, *pending)
        if self.active:
            self._guard(self._log, step, metrics)

    def _log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(self.run, metrics=items[i:i + MAX_BATCH])

    def close(self, status: str = "FINISHED") -> None:
        if self.active:
            self._guard(self.client.set_terminated, self.run, status)
