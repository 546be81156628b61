"""Loading what an evaluation needs, and refusing what does not fit, before any metric runs.

A report compares checkpoints on the same tokens, so every checkpoint must carry the same
discretization (fingerprint), and each model's data dimensions (concepts, bins, treatments, time
features, hours) must match the tensors the sites produce under that discretization. Any mismatch is a
:class:`CheckpointError` naming the checkpoint, the field, and both values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clin_jepa.errors import CheckpointError, ConfigError

GENERIC_STEMS = {"ckpt", "checkpoint", "model", "final", "latest", "last"}


@dataclass
class LoadedModel:
    label: str
    path: Path
    model: Any  # ClinJEPA in eval mode
    disc: Any  # Discretization
    info: dict[str, Any] = field(default_factory=dict)  # mode, phase, step, round: copied to metrics
    tasks: tuple[str, ...] | None = None  # task names the checkpoint was made for, when it records them


def default_label(path: Path) -> str:
    """File stem, or the parent folder's name when the stem says nothing (``runs/naive/ckpt.pt``)."""
    return path.parent.name if path.stem in GENERIC_STEMS and path.parent.name else path.stem


def assign_labels(paths: Sequence[str | Path], labels: Mapping[str, str]) -> list[str]:
    """Display names: ``labels`` (keyed by path as given, or resolved) first, then :func:`default_label`;
    duplicates get ``#2``, ``#3``... so no two columns of a report share a name."""
    resolved = {str(Path(k).resolve()): v for k, v in labels.items()}
    unknown = [k for k in resolved if k not in {str(Path(p).resolve()) for p in paths}]
    if unknown:
        raise CheckpointError(f"--labels names checkpoint(s) not being evaluated: {unknown}; "
                              f"evaluated: {[str(p) for p in paths]}")
    out: list[str] = []
    for p in paths:
        name = resolved.get(str(Path(p).resolve())) or default_label(Path(p))
        base, k = name, 2
        while name in out:
            name, k = f"{base}#{k}", k + 1
        out.append(name)
    return out


def _unpack(path: Path, device: str) -> tuple[Any, Any, dict[str, Any], tuple[str, ...] | None]:
    """(model, discretization, info, task names or None) from one checkpoint file."""
    from clin_jepa.checkpoint import load_checkpoint

    ck = load_checkpoint(path, verify=True)
    disc = ck.load_discretization()
    if disc is None:
        raise CheckpointError(f"checkpoint {path} carries no discretization, so its tokens cannot be "
                              "rebuilt; evaluate checkpoints written by `clin-jepa train` or the ServerApp")
    model = ck.build_model().to(device).eval()
    # the init seed pairs a trained run with the untrained control of the same seed
    seed = (ck.extra.get("trainer") or ck.extra.get("federation") or {}).get("seed")
    info = {"mode": ck.curriculum.get("mode"), "phase": ck.phase, "step": ck.step, "round": ck.round,
            "seed": seed}
    return model, disc, {k: v for k, v in info.items() if v not in (None, "")}, tuple(ck.tasks) or None


def _model_vs_disc(label: str, path: Path, cfg: Any, disc: Any) -> list[str]:
    pairs = [("n_concepts", len(disc.concepts), "discretization concepts"),
             ("n_bins", disc.n_bins, "discretization n_bins"),
             ("n_treatments", len(disc.treatments), "discretization treatments")]
    return [f"{label} ({path}): model.{name}={getattr(cfg, name)} but its {what} = {want}"
            for name, want, what in pairs if getattr(cfg, name) != want]


def load_models(paths: Sequence[str | Path], labels: Mapping[str, str], device: str = "cpu"
                ) -> list[LoadedModel]:
    """Load every checkpoint and check they are consistent with themselves and with each other."""
    if not paths:
        raise CheckpointError("no checkpoint given: evaluate needs at least one CKPT path")
    names = assign_labels(paths, labels)
    models, problems = [], []
    for name, p in zip(names, paths, strict=True):
        path = Path(p)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
        model, disc, info, tasks = _unpack(path, device)
        problems += _model_vs_disc(name, path, model.cfg, disc)
        models.append(LoadedModel(name, path, model, disc, info, tasks))
    prints = {m.label: m.disc.fingerprint() for m in models}
    if len(set(prints.values())) > 1:
        problems.append("checkpoints use different discretizations, so their tokens are not comparable "
                        "in one report: " + ", ".join(f"{k}: {v[:12]}" for k, v in prints.items())
                        + ". Evaluate them in separate reports, or train them from one statistics round.")
    task_sets = {m.label: m.tasks for m in models if m.tasks is not None}
    if len({tuple(t) for t in task_sets.values()}) > 1:
        problems.append(f"checkpoints were made for different task lists: {task_sets}")
    if problems:
        raise CheckpointError("refusing to evaluate: " + "; ".join(problems))
    return models


def check_against_data(m: LoadedModel, data: Any) -> None:
    """The tensors built with ``m.disc`` must have the shapes and names the model was built for."""
    cfg, problems = m.model.cfg, []
    n, t, c = data.bins.shape
    checks = [("concepts", tuple(data.concepts), tuple(m.disc.concepts)),
              ("treatments", tuple(data.treatments), tuple(m.disc.treatments)),
              ("model.n_concepts", c, cfg.n_concepts),
              ("model.n_treatments", data.treat.shape[2], cfg.n_treatments),
              ("model.n_time", data.time.shape[2], cfg.n_time)]
    problems += [f"data {what} = {got} but the checkpoint expects {want}" for what, got, want in checks
                 if got != want]
    if t > cfg.max_hours:
        problems.append(f"data has {t} hours but the model's positional table holds {cfg.max_hours}")
    if n and int(np.max(data.bins)) > cfg.n_bins:
        problems.append(f"data has value bin {int(np.max(data.bins))} > model.n_bins={cfg.n_bins}")
    if m.tasks is not None and tuple(m.tasks) != tuple(data.tasks):
        problems.append(f"data tasks {list(data.tasks)} differ from the checkpoint's {list(m.tasks)}")
    if problems:
        raise CheckpointError(f"checkpoint {m.label} ({m.path}) does not match the sites' data: "
                              + "; ".join(problems))


def load_sites(paths: Sequence[str | Path], disc: Any, hours: int, bar: Any = None,
               ground_truth: bool = False, tasks: Sequence[str] = ()) -> tuple[Any, np.ndarray | None]:
    """Tokenize every site with ``disc`` and concatenate them (one SiteTensors); with ``ground_truth``
    also each row's hidden cohort from the site's ``ground_truth.parquet`` (else None)."""
    from clin_jepa.config import load_site_config
    from clin_jepa.data.tasks import load_tasks
    from clin_jepa.data.tokenize import SiteTensors, build_site_tensors

    if not paths:
        raise CheckpointError("no site config given: pass --sites site_configs/*.yaml")
    specs = load_tasks(names=list(tasks) if tasks else None)
    cfgs = [load_site_config(p) for p in paths]
    names = [c.site for c in cfgs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--sites names the same site twice ({names}); its stays would count double")
    from clin_jepa.evaluation.ground_truth import hidden_cohorts, read_ground_truth

    # read every truth file first: a missing one is refused before minutes of tokenizing
    truths = [read_ground_truth(cfg.data_path) for cfg in cfgs] if ground_truth else []
    parts, hidden = [], []
    for i, cfg in enumerate(cfgs):
        part = build_site_tensors(cfg, disc, specs, hours=hours)
        parts.append(part)
        if ground_truth:
            hidden.append(hidden_cohorts(part.subject_id, part.stay_start, truths[i], str(cfg.data_path)))
        if bar is not None:
            bar.update(1)
    return SiteTensors.concat(parts), (np.concatenate(hidden) if ground_truth else None)
