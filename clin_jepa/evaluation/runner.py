"""Evaluate checkpoints on sites' held-out stays: load, check, tokenize, measure, report.

Order of work (so a refusal never leaves files behind): load and cross-check every checkpoint, tokenize
every site with the checkpoints' shared discretization, check each model against the tensors, and only
then compute metrics and write the report.

Splits: probes and baselines fit on ``train`` (the GRU selects its epoch on ``tuning``) and are scored on
``held_out``; drift and geometry are measured on ``held_out`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.errors import DataValidationError
from clin_jepa.evaluation import geometry
from clin_jepa.evaluation.baselines import GRUSettings, gru_baseline, hourly_inputs, last_value_features
from clin_jepa.evaluation.drift import EARLY, LATE, drift_curve, relative_change, window_mean
from clin_jepa.evaluation.embed import encode, probe_features
from clin_jepa.evaluation.loading import LoadedModel, check_against_data, load_models, load_sites
from clin_jepa.evaluation.probes import fit_linear_probes
from clin_jepa.evaluation.report import write_report

EMBEDDING_DOC = ("target encoder Ē, layer-normed latent at hour 24 concatenated with the mean of its "
                 "layer-normed latents over hours 1–24; standardized logistic regression fit on train, "
                 "scored on held_out")
COHORT_DOC = ("deteriorating = any task label positive (in-ICU death or an abnormal value in its window); "
              "stable = every defined task label 0; stays with no defined label belong to neither. "
              "Displacement = ‖mean Ē(hours 19–24) − mean Ē(last 6 in-stay hours ≤ 72)‖₂ on layer-normed "
              "latents.")


@dataclass(frozen=True)
class EvalSettings:
    context: int = 24
    horizon: int = 48
    bootstrap: int = 200
    seed: int = 0
    batch_size: int = 128
    device: str = "cpu"
    baselines: bool = True
    gru: GRUSettings = field(default_factory=GRUSettings)


def evaluate_model(m: LoadedModel, train: SiteTensors, held: SiteTensors, s: EvalSettings
                   ) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Drift, geometry and probes of one checkpoint; returns its metrics and its projection for plotting."""
    enc_held = encode(m.model, held, context=s.context, horizon=s.horizon,
                      batch_size=s.batch_size, device=s.device)
    enc_train = encode(m.model, train, context=s.context, horizon=None,
                       batch_size=s.batch_size, device=s.device)
    horizon_slice = slice(s.context, s.context + s.horizon)
    valid = held.mask[:, horizon_slice]
    curve, counts = drift_curve(enc_held.rollout, enc_held.target[:, horizon_slice], valid)
    cohort = geometry.cohorts(held.labels)
    disp = geometry.displacement(enc_held.target, held.mask, s.context)
    probes = fit_linear_probes(probe_features(enc_train.target, s.context), train.labels,
                               probe_features(enc_held.target, s.context), held.labels,
                               list(held.tasks), s.bootstrap, s.seed)
    proj = geometry.projection_2d(enc_held.target, held.mask, s.context, s.seed)
    metrics = {
        "checkpoint": str(m.path),
        **m.info,
        "drift": {"curve": curve, "counts": counts, "relative_change": relative_change(curve),
                  "early": window_mean(curve, EARLY), "late": window_mean(curve, LATE),
                  "early_hours": list(EARLY), "late_hours": list(LATE)},
        "geometry": geometry.displacement_ratio(disp, cohort),
        "probes": probes.to_dict(),
    }
    return metrics, (proj, held.mask, cohort)


def evaluate_baselines(train: SiteTensors, tune: SiteTensors, held: SiteTensors, n_bins: int,
                       s: EvalSettings) -> dict[str, Any]:
    tasks = list(held.tasks)
    lv = [last_value_features(t.bins, t.treat, t.time, n_bins, s.context) for t in (train, held)]
    out = {"last_value_lr": {"probes": fit_linear_probes(lv[0], train.labels, lv[1], held.labels, tasks,
                                                         s.bootstrap, s.seed).to_dict()}}
    xs = [hourly_inputs(t.bins, t.treat, t.time, n_bins, s.context) for t in (train, tune, held)]
    torch.manual_seed(s.seed)
    gru = gru_baseline(xs[0], train.labels, xs[1], tune.labels, xs[2], held.labels, tasks,
                       s.bootstrap, s.seed, s.gru)
    out["gru"] = {"probes": gru.to_dict()}
    return out


def evaluate(checkpoints: Sequence[str | Path], sites: Sequence[str | Path], out_dir: str | Path,
             labels: dict[str, str] | None = None, settings: EvalSettings | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Evaluate ``checkpoints`` on ``sites`` and write the report to ``out_dir``; returns the metrics.

    ``labels`` maps a checkpoint path (as given) to its display name. Raises ``CheckpointError`` for a
    checkpoint that does not fit the data or the other checkpoints, before anything is written.
    """
    s = settings or EvalSettings()
    models = load_models(checkpoints, labels or {}, s.device)
    disc = models[0].disc
    steps = len(sites) + 2 * len(models) + (2 if s.baselines else 0) + 1
    with tqdm(total=steps, desc="evaluate", unit="step", disable=not progress) as bar:
        data = load_sites(sites, disc, s.context + s.horizon, bar)
        for m in models:
            check_against_data(m, data)
        train, tune, held = (data.subset(name) for name in ("train", "tuning", "held_out"))
        empty = [name for name, part in (("train", train), ("held_out", held)) if len(part) == 0]
        if empty:
            raise DataValidationError(", ".join(map(str, sites)), [
                f"no eligible ICU stay (>= 24 h) in the {name} split of any site; probes fit on train and "
                "every metric is scored on held_out" for name in empty])
        results, projections = {}, {}
        for m in models:
            bar.set_postfix_str(m.label)
            results[m.label], projections[m.label] = evaluate_model(m, train, held, s)
            bar.update(2)
        baselines = {}
        if s.baselines:
            bar.set_postfix_str("baselines")
            baselines = evaluate_baselines(train, tune, held, disc.n_bins, s)
            bar.update(2)
        metrics = {
            "settings": {**asdict(s), "embedding": EMBEDDING_DOC, "cohorts": COHORT_DOC},
            "data": {"sites": data.site.split("+"), "discretization": disc.fingerprint(),
                     "tasks": list(held.tasks),
                     "n_stays": {"train": len(train.split), "tuning": len(tune.split),
                                 "held_out": len(held.split)}},
            "models": results,
            "baselines": baselines,
            "notes": [],
        }
        bar.set_postfix_str("report")
        write_report(out_dir, metrics, projections)
        bar.update(1)
    return metrics

