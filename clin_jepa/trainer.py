"""Centralized training on pooled sites (the upper reference) or on one site (local-only baseline).

Writes ``OUT/metrics.jsonl`` (one record per ``log_every`` steps), ``OUT/ckpt.pt`` (latest, every
``ckpt_every`` steps and at the end) and ``OUT/ckpt-stepNNNNNNN.pt`` (periodic copies). A run resumed from
``OUT/ckpt.pt`` continues exactly: the model, target, optimizer and RNG state come from the checkpoint,
schedules are functions of the step, and the batch of step ``s`` depends only on (seed, s).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clin_jepa.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from clin_jepa.config import MAX_BATCH_SIZE, load_site_config
from clin_jepa.curriculum import CurriculumConfig, CurriculumSchedule, phase_at
from clin_jepa.errors import ConfigError
from clin_jepa.io import atomic_write_text
from clin_jepa.losses import LossConfig
from clin_jepa.models import ClinJEPA, preset
from clin_jepa.train import build_optimizer, train_steps

CKPT_NAME = "ckpt.pt"
METRICS_NAME = "metrics.jsonl"
MAX_HOURS = 24 * 30


@dataclass(frozen=True)
class TrainerConfig:
    """Run settings stored in the checkpoint (``extra["trainer"]``) so ``--resume`` needs none of them."""

    preset: str = "small"
    steps: int = 1000
    batch_size: int = 32
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 0
    hours: int = 72
    device: str = "cpu"
    amp: bool = True
    compile: bool = False
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of the preset

    def __post_init__(self) -> None:
        for name in ("batch_size", "log_every", "hours"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(f"train.batch_size: at most {MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.hours > MAX_HOURS:
            raise ConfigError(f"train.hours: at most {MAX_HOURS} hours per stay window, got {self.hours}")
        if self.steps < 0:  # 0 = the seeded, untrained initialization (the paired control of a seed)
            raise ConfigError(f"train.steps: must be >= 0, got {self.steps}")
        if self.ckpt_every < 0:
            raise ConfigError(f"train.ckpt_every: must be >= 0 (0 = only at the end), got {self.ckpt_every}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"train.device: {self.device!r} is not one of cpu, cuda, auto")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "loss": self.loss.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerConfig:
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"trainer config: unknown key(s) {sorted(unknown)}")
        d["loss"] = LossConfig.from_dict(d.get("loss", {}))
        return cls(**d)


@dataclass(frozen=True)
class PreparedSites:
    """Pooled train split of one or more sites, tokenized with one shared discretization."""

    train: Any  # clin_jepa.data.tokenize.SiteTensors
    disc: Any  # clin_jepa.data.stats.Discretization
    task_names: tuple[str, ...]
    sites: tuple[str, ...]

    @property
    def label(self) -> str:
        return "+".join(self.sites)


def prepare_sites(paths: Sequence[str | Path], hours: int = 72, disc: Any = None) -> PreparedSites:
    """Load site configs; without ``disc``, run the statistics round (per-site histograms with small
    cells suppressed, merged, quantile edges) as the federation would; tokenize every site and pool the
    train splits."""
    from clin_jepa.data.stats import merge_statistics, quantile_edges, site_statistics
    from clin_jepa.data.tasks import load_tasks
    from clin_jepa.data.tokenize import SiteTensors, build_site_tensors
    from clin_jepa.security.disclosure import DEFAULT_MIN_PATIENTS

    if not paths:
        raise ConfigError("train: give at least one site config (--sites a.yaml [b.yaml ...])")
    cfgs = [load_site_config(p) for p in paths]
    names = [c.site for c in cfgs]
    if len(set(names)) != len(names):
        raise ConfigError(f"train: the same site is given twice: {names}")
    if disc is None:
        # the same small-cell suppression a federated site applies (at the default threshold), so a
        # pooled or local-only run shares the federation's discretization of the same data
        stats = [site_statistics(c).suppressed(DEFAULT_MIN_PATIENTS) for c in cfgs]
        disc = quantile_edges(merge_statistics(stats))
    tasks = load_tasks()
    train = SiteTensors.concat([build_site_tensors(c, disc, tasks, hours).subset("train") for c in cfgs])
    if len(train) == 0:
        raise ConfigError(f"train: no eligible ICU stays (>= 24 h) in the train split of {names}")
    return PreparedSites(train, disc, tuple(t.name for t in tasks), tuple(names))


def resolve_device(name: str) -> torch.device:
    from clin_jepa.device import resolve_device as resolve

    return resolve(name, "train.device")


def _read_metrics(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The run's metrics lines, each with its record; a :class:`ConfigError` for a damaged file (checked
    before a resume writes anything)."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"resume: cannot read {path} ({exc})") from None
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            torn = " (the last line is torn: the run stopped while writing it)" if i == len(lines) else ""
            raise ConfigError(f"resume: {path} line {i} is not a JSON record{torn}; delete that line (or "
                              f"restore the file) and resume again")
        out.append((line, record))
    return out


def _rewind_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (they will be produced again)."""
    if path.is_file():
        keep = [line for line, record in _read_metrics(path) if record.get("step", 0) <= step]
        atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def _refuse_private_sites(sites: Sequence[str | Path]) -> None:
    """Centralized training has no DP-SGD: a site whose config switches privacy on is refused, never
    silently trained without it."""
    private = [cfg.site for cfg in map(load_site_config, sites) if cfg.privacy.enabled]
    if private:
        raise ConfigError(f"train: site(s) {private} have privacy.enabled: true, and `clin-jepa train` does "
                          f"not train with DP-SGD; train them federated (flwr run, sample-level DP at each "
                          f"site) or set privacy.enabled: false in a copy of the config for a non-private "
                          f"reference run")


@dataclass
class _Run:
    model: ClinJEPA
    optimizer: torch.optim.Optimizer
    data: PreparedSites
    tcfg: TrainerConfig
    ccfg: CurriculumConfig
    device: torch.device
    step: int

    def checkpoint(self, metrics: dict[str, Any]) -> Checkpoint:
        return Checkpoint.from_model(
            self.model, curriculum=self.ccfg.to_dict(), discretization=self.data.disc.to_dict(),
            tasks=list(self.data.task_names), step=self.step,
            phase=(phase_at(max(0, self.step - 1), self.tcfg.steps, self.ccfg).name if self.tcfg.steps
                   else "init"),
            optimizer=self.optimizer.state_dict(), metrics=metrics,
            extra={"trainer": self.tcfg.to_dict(), "sites": list(self.data.sites),
                   "rng": {"torch": torch.get_rng_state()}})


def _open_run(sites: Sequence[str | Path], out: Path, tcfg: TrainerConfig | None,
              ccfg: CurriculumConfig | None, resume: bool) -> _Run:
    """A fresh run (seeded init, statistics round) or the state stored in ``out/ckpt.pt``."""
    ckpt = None
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out must be a folder (new or holding this run)")
    _refuse_private_sites(sites)
    if resume:
        if tcfg is not None or ccfg is not None:
            raise ConfigError("resume continues the stored run: do not pass new trainer/curriculum settings")
        _read_metrics(out / METRICS_NAME)
        ckpt = load_checkpoint(out / CKPT_NAME)
        tcfg = TrainerConfig.from_dict(ckpt.extra["trainer"])
        ccfg = CurriculumConfig.from_dict(ckpt.curriculum)
    elif (out / CKPT_NAME).exists():
        raise ConfigError(f"{out} already holds a run ({CKPT_NAME}); continue it with --resume {out} or "
                          "choose another --out folder")
    tcfg, ccfg = tcfg or TrainerConfig(), ccfg or CurriculumConfig()
    data = prepare_sites(sites, tcfg.hours, ckpt.load_discretization() if ckpt else None)
    if ckpt is not None:
        if ckpt.tasks and tuple(ckpt.tasks) != data.task_names:
            raise ConfigError(f"resume: the checkpoint's tasks {ckpt.tasks} differ from the current task "
                              f"definitions {list(data.task_names)}")
        model, step = ckpt.build_model(), ckpt.step
        torch.set_rng_state(ckpt.extra["rng"]["torch"])
    else:
        torch.manual_seed(tcfg.seed)
        dims = {"n_concepts": len(data.disc.concepts), "n_treatments": len(data.disc.treatments),
                "n_bins": data.disc.n_bins, "max_hours": max(tcfg.hours, 128)}
        model = ClinJEPA(preset(tcfg.preset, **{**tcfg.model, **dims}))
        step = 0
    device = resolve_device(tcfg.device)
    model.to(device)
    optimizer = build_optimizer(model, ccfg)
    if ckpt is not None and ckpt.optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer)
    if tcfg.compile:  # in place: parameter names, hence checkpoints, are unchanged
        for module in model.groups().values():
            module.compile()
    return _Run(model, optimizer, data, tcfg, ccfg, device, step)


def train_centralized(sites: Sequence[str | Path], out: str | Path, tcfg: TrainerConfig | None = None,
                      ccfg: CurriculumConfig | None = None, resume: bool = False,
                      progress: bool = True, stop_at: int | None = None,
                      on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train on the pooled train splits of ``sites``; returns the last logged record.

    With ``resume=True`` the run continues from ``out/ckpt.pt`` and its stored configs (``tcfg`` and
    ``ccfg`` must then be ``None``); the sites are tokenized with the checkpoint's discretization.
    ``stop_at`` ends this call after that global step with a checkpoint (a time-boxed session, or a
    test of resume); the schedule still spans ``tcfg.steps``. ``on_record`` sees every metrics record
    after it is written (experiment tracking: ``clin_jepa.tracking``).
    """
    from clin_jepa.data.dataset import infinite_batches

    out = Path(out)
    run = _open_run(sites, out, tcfg, ccfg, resume)
    tcfg = run.tcfg
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS_NAME
    if resume:
        _rewind_metrics(metrics_path, run.step)
    else:
        atomic_write_text(metrics_path, "")
        save_checkpoint(out / CKPT_NAME, run.checkpoint({}))  # a crash before the first save can resume
    batches = infinite_batches(run.data.train, tcfg.batch_size, tcfg.seed, start_step=run.step)
    schedule = CurriculumSchedule(run.ccfg, tcfg.steps)
    end = tcfg.steps if stop_at is None else max(run.step, min(stop_at, tcfg.steps))
    record: dict[str, Any] = {}
    monitors: dict[str, float] = {}
    bar = tqdm(total=tcfg.steps, initial=run.step, disable=not progress, unit="step",
               desc=f"train {run.data.label}")
    while run.step < end:
        # chunks end on log and checkpoint boundaries; train_steps is stateless, so chunking is invisible
        n = min(tcfg.log_every - run.step % tcfg.log_every, end - run.step)
        if tcfg.ckpt_every:
            n = min(n, tcfg.ckpt_every - run.step % tcfg.ckpt_every)
        monitors.clear()
        start = time.perf_counter()
        metrics, run.step = train_steps(run.model, batches, run.optimizer, schedule, run.step, n,
                                        loss_cfg=tcfg.loss, device=run.device, amp=tcfg.amp,
                                        log_every=tcfg.log_every, on_log=lambda _s, d: monitors.update(d),
                                        seed=tcfg.seed)
        hours_per_s = metrics["num_examples"] * run.data.train.hours / max(time.perf_counter() - start, 1e-9)
        if run.step % tcfg.log_every == 0 or run.step == end:
            record = {"step": run.step, "phase": phase_at(run.step - 1, tcfg.steps, run.ccfg).name, **metrics,
                      **{k: v for k, v in monitors.items() if k not in metrics},
                      "patient_hours_per_s": hours_per_s}
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            if on_record is not None:
                on_record(record)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", phase=record["phase"])
        bar.update(n)
        periodic = bool(tcfg.ckpt_every) and run.step % tcfg.ckpt_every == 0
        if run.step == end or periodic:
            ck = run.checkpoint(record)
            save_checkpoint(out / CKPT_NAME, ck)
            if periodic:
                save_checkpoint(out / f"ckpt-step{run.step:07d}.pt", ck)
    bar.close()
    return record
