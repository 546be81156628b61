"""Evaluate checkpoints on sites' held-out stays: load, check, tokenize, measure, report.

Order of work (so a refusal never leaves files behind): load and cross-check every checkpoint, tokenize
every site with the checkpoints' shared discretization, check each model against the tensors, and only
then compute metrics and write the report.

Splits: probes and baselines fit on ``train`` (the GRU selects its epoch on ``tuning``) and are scored on
``held_out``; drift and geometry are measured on ``held_out`` only.

Every trained checkpoint is paired with the untrained checkpoint of its own seed when one is evaluated
alongside (:mod:`clin_jepa.evaluation.paired`); its metrics then carry the paired AUROC difference and
the difference's bootstrap sd over held-out stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.meds import SPLIT_CODE
from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.errors import DataValidationError
from clin_jepa.evaluation import geometry
from clin_jepa.evaluation.baselines import GRUSettings, gru_baseline, hourly_inputs, last_value_features
from clin_jepa.evaluation.drift import copy_forward, drift_summary, rollout_against_copy
from clin_jepa.evaluation.embed import encode, probe_features
from clin_jepa.evaluation.loading import LoadedModel, check_against_data, load_models, load_sites
from clin_jepa.evaluation.paired import SEED_SEP, find_pairs, probe_noise
from clin_jepa.evaluation.predictions import attach_label_files, write_label_files
from clin_jepa.evaluation.probes import ProbeResult, fit_linear_probes
from clin_jepa.evaluation.report import write_report

EMBEDDING_DOC = ("target encoder Ē, layer-normed latent at hour 24 concatenated with the mean of its "
                 "layer-normed latents over hours 1–24; standardized logistic regression fit on train, "
                 "scored on held_out")
COHORT_DOC = ("per task: stays positive for the task vs stays negative for every task (every defined label "
              "0); displacement_per_task = mean ratio over tasks. hidden (--ground-truth): the generator's "
              "deteriorating stays vs its stable cohort. any_label: any task positive vs all negative (not "
              "a cohort split; used for the plot without ground truth). Displacement = ‖mean Ē(hours "
              "19–24) − mean Ē(last 6 in-stay hours ≤ 72)‖₂ on layer-normed latents.")


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
    gru_seeds: tuple[int, ...] = ()  # () = one GRU seeded with ``gru.seed``, named "gru"
    ground_truth: bool = False
    tasks: tuple[str, ...] = ()  # task names to probe; () = the packaged default set
    label_files: str = ""  # a folder of MEDS label files (<task>.parquet) used instead of task definitions


@dataclass
class ModelResult:
    metrics: dict[str, Any]
    projection: tuple[np.ndarray, np.ndarray, np.ndarray]
    probes: ProbeResult


def _stay_definitions(sites: Sequence[str | Path]) -> dict[str, str]:
    """Site name -> the stay definition its config uses (reports say which stays they scored)."""
    from clin_jepa.config import load_site_config

    cfgs = [load_site_config(p) for p in sites]
    return {c.site: c.stay.describe() for c in cfgs}


def evaluate_model(m: LoadedModel, train: SiteTensors, held: SiteTensors, s: EvalSettings,
                   hidden: np.ndarray | None = None, tune: SiteTensors | None = None) -> ModelResult:
    """Drift, geometry and probes of one checkpoint; ``hidden`` = held-out rows' ground-truth cohorts."""
    result = measure(m.model, train, held, s, hidden, tune)
    result.metrics = {"checkpoint": str(m.path), **m.info, **result.metrics}
    return result


def measure(model: torch.nn.Module, train: SiteTensors, held: SiteTensors, s: EvalSettings,
            hidden: np.ndarray | None = None, tune: SiteTensors | None = None) -> ModelResult:
    """Drift, geometry and probes of one model: the one implementation behind ``clin-jepa evaluate`` and
    a site's federated evaluation (:mod:`clin_jepa.evaluation.federated`)."""
    enc_held = encode(model, held, context=s.context, horizon=s.horizon,
                      batch_size=s.batch_size, device=s.device)
    enc_train = encode(model, train, context=s.context, horizon=None,
                       batch_size=s.batch_size, device=s.device)
    horizon_slice = slice(s.context, s.context + s.horizon)
    valid = held.mask[:, horizon_slice]
    target = enc_held.target[:, horizon_slice]
    copied = copy_forward(enc_held.copy, s.horizon)
    curve, counts, copy_curve, gap = rollout_against_copy(enc_held.rollout, copied, target, valid)
    disp = geometry.displacement(enc_held.target, held.mask, s.context)
    any_label = geometry.cohorts(held.labels)
    geo = {**geometry.per_task_ratios(disp, held.labels, list(held.tasks)),
           "hidden": None if hidden is None else geometry.displacement_ratio(disp, hidden),
           "any_label": geometry.displacement_ratio(disp, any_label)}
    # read-outs see hours < context of the target encoder only (never the rollout: it reads true future
    # treatments); the tuning split, when there is one, only chooses each probe's regularization
    tuned = None
    if tune is not None and len(tune):
        enc_tune = encode(model, tune, context=s.context, horizon=None, batch_size=s.batch_size,
                          device=s.device)
        tuned = (probe_features(enc_tune.target, s.context), tune.labels)
    probes = fit_linear_probes(probe_features(enc_train.target, s.context), train.labels,
                               probe_features(enc_held.target, s.context), held.labels,
                               list(held.tasks), s.bootstrap, s.seed, tuned)
    proj = geometry.projection_2d(enc_held.target, held.mask, s.context, s.seed)
    metrics = {"drift": drift_summary(curve, counts, copy_curve, gap), "geometry": geo,
               "probes": probes.to_dict()}
    return ModelResult(metrics, (proj, held.mask, any_label if hidden is None else hidden), probes)


def evaluate_baselines(train: SiteTensors, tune: SiteTensors, held: SiteTensors, n_bins: int,
                       s: EvalSettings) -> dict[str, ProbeResult]:
    tasks = list(held.tasks)

    def last_values(t: SiteTensors) -> tuple[np.ndarray, np.ndarray]:
        return last_value_features(t.bins, t.treat, t.time, n_bins, s.context), t.labels

    out = {"last_value_lr": fit_linear_probes(*last_values(train), *last_values(held), tasks, s.bootstrap,
                                              s.seed, last_values(tune) if len(tune) else None)}
    xs = [hourly_inputs(t.bins, t.treat, t.time, n_bins, s.context) for t in (train, tune, held)]
    named = {f"gru{SEED_SEP}{k}": k for k in s.gru_seeds} or {"gru": s.gru.seed}
    for name, gseed in named.items():
        torch.manual_seed(gseed)
        out[name] = gru_baseline(xs[0], train.labels, xs[1], tune.labels, xs[2], held.labels, tasks,
                                 s.bootstrap, s.seed, replace(s.gru, seed=gseed))
    return out


def _attach_noise(results: dict[str, ModelResult], baselines: dict[str, ProbeResult],
                  pairs: dict[str, str], held: SiteTensors, s: EvalSettings) -> dict[str, float]:
    """Bootstrap sd of every mean AUROC and the paired difference of every trained run vs its control;
    returns the sd of every model and baseline."""
    probes = {k: r.probes for k, r in results.items()} | baselines
    sd, diff_sd = probe_noise(held.labels, probes, pairs, s.bootstrap, s.seed)
    for k, r in results.items():
        r.metrics["probes"]["mean_auroc_sd"] = sd.get(k, float("nan"))
    for k, control in pairs.items():
        mine, theirs = results[k].metrics, results[control].metrics
        mine["paired"] = {"untrained": control, "seed": mine.get("seed"),
                          "diff": mine["probes"]["mean_auroc"] - theirs["probes"]["mean_auroc"],
                          "diff_sd": diff_sd.get(k, float("nan")),
                          "untrained_early": theirs["drift"]["early"],
                          "untrained_late": theirs["drift"]["late"]}
    return sd


def _round_plots(models: Sequence[LoadedModel]) -> dict[str, bytes]:
    """The round plots of the federated run each checkpoint comes from (its folder's ``metrics.jsonl``),
    named ``<label>_rounds_*.png``; centralized runs have no rounds and add nothing."""
    from clin_jepa.evaluation.rounds import read_lines, round_plots

    out: dict[str, bytes] = {}
    for m in models:
        lines = read_lines(m.path.parent / "metrics.jsonl")
        if any(isinstance(ln.get("round"), int) and ln["round"] >= 1 for ln in lines):
            out.update({f"{m.label}_{name}": png for name, png in round_plots(lines).items()})
    return out


def evaluate(checkpoints: Sequence[str | Path], sites: Sequence[str | Path], out_dir: str | Path,
             labels: dict[str, str] | None = None, settings: EvalSettings | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Evaluate ``checkpoints`` on ``sites`` and write the report to ``out_dir``; returns the metrics.

    ``labels`` maps a checkpoint path (as given) to its display name. Raises ``CheckpointError`` for a
    checkpoint that does not fit the data or the other checkpoints, and ``DataValidationError`` for a
    missing ground-truth file when asked for one, before anything is written.
    """
    s = settings or EvalSettings()
    models = load_models(checkpoints, labels or {}, s.device)
    disc = models[0].disc
    steps = len(sites) + 2 * len(models) + (2 if s.baselines else 0) + 1
    with tqdm(total=steps, desc="evaluate", unit="step", disable=not progress) as bar:
        data, hidden = load_sites(sites, disc, s.context + s.horizon, bar, ground_truth=s.ground_truth,
                                  tasks=s.tasks)
        if s.label_files:
            data = attach_label_files(data, Path(s.label_files), s.context)
        for m in models:
            if s.tasks or s.label_files:  # tasks asked for are new questions to the same embeddings
                m.tasks = None
            check_against_data(m, data)
        train, tune, held = (data.subset(name) for name in ("train", "tuning", "held_out"))
        held_hidden = None if hidden is None else hidden[data.split == SPLIT_CODE["held_out"]]
        empty = [name for name, part in (("train", train), ("held_out", held)) if len(part) == 0]
        if empty:
            raise DataValidationError(", ".join(map(str, sites)), [
                f"no eligible ICU stay (>= 24 h) in the {name} split of any site; probes fit on train and "
                "every metric is scored on held_out" for name in empty])
        results: dict[str, ModelResult] = {}
        for m in models:
            bar.set_postfix_str(m.label)
            results[m.label] = evaluate_model(m, train, held, s, held_hidden, tune)
            bar.update(2)
        baselines: dict[str, ProbeResult] = {}
        if s.baselines:
            bar.set_postfix_str("baselines")
            baselines = evaluate_baselines(train, tune, held, disc.n_bins, s)
            bar.update(2)
        pairs = find_pairs(models)
        sd = _attach_noise(results, baselines, pairs, held, s)
        notes = [f"{k} has no untrained control of its seed in this evaluation (evaluate the output of "
                 "`clin-jepa train --steps 0 --seed S` alongside)" for k, r in results.items()
                 if k not in pairs and r.metrics.get("step") != 0]
        if held_hidden is not None:
            n = {c: int((held_hidden == c).sum()) for c in (geometry.DETERIORATING, geometry.STABLE,
                                                             geometry.UNDEFINED)}
            notes.append(f"hidden cohorts of held-out stays: {n[geometry.DETERIORATING]} deteriorating, "
                         f"{n[geometry.STABLE]} stable, {n[geometry.UNDEFINED]} neither")
        metrics = {
            "settings": {**asdict(s), "embedding": EMBEDDING_DOC, "cohorts": COHORT_DOC},
            "data": {"sites": data.site.split("+"), "discretization": disc.fingerprint(),
                     "stays": _stay_definitions(sites), "catalog": load_concepts().describe(),
                     "tasks": list(held.tasks),
                     "n_stays": {"train": len(train.split), "tuning": len(tune.split),
                                 "held_out": len(held.split)}},
            "models": {k: r.metrics for k, r in results.items()},
            "baselines": {k: {"probes": {**p.to_dict(), "mean_auroc_sd": sd.get(k, float("nan"))}}
                          for k, p in baselines.items()},
            "notes": notes,
        }
        bar.set_postfix_str("report")
        write_report(out_dir, metrics, {k: r.projection for k, r in results.items()}, _round_plots(models))
        scores = {**{k: r.probes.scores for k, r in results.items()},
                  **{k: p.scores for k, p in baselines.items()}}
        write_label_files(Path(out_dir), data, held, s.context, scores)
        bar.update(1)
    return metrics
