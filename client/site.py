"""Per-site state of a ClientApp process, cached across rounds.

A simulation runs each site's rounds in whichever worker process is free, and a deployed SuperNode may
restart, so state lives at two levels:

* in memory (module-level ``_SITES``): the parsed site config, its statistics, the prepared train tensors
  (keyed by the discretization's fingerprint, so rounds never re-read parquet), the model and optimizer;
  at most ``MAX_CACHED_SITES`` sites per process, least recently used dropped first (a simulation worker
  serves many sites in turn; a deployed SuperNode serves one);
* on disk in the site's ``state_dir``: the tensor cache (``build_site_tensors``) and, per run, the
  optimizer's moments stamped with the round they belong to, so a worker that did not run the previous
  round, or a restarted node, continues exactly where the site left off.

Invariant: the optimizer state used in round ``r`` is the one produced by this site in round ``r - 1`` of
the same run, or a fresh one when the site did not take part then.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.privacy import site_dp, train_round_with_dp
from clin_jepa.config import SiteConfig, load_site_config
from clin_jepa.curriculum import CurriculumConfig, Phase, StepPlan
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.dataset import infinite_batches
from clin_jepa.data.stats import Discretization, SiteStatistics, site_statistics
from clin_jepa.data.tasks import load_tasks
from clin_jepa.data.tokenize import SiteTensors, build_site_tensors
from clin_jepa.device import compile_modules, resolve_device
from clin_jepa.errors import ConfigError
from clin_jepa.evaluation.federated import evaluate_site
from clin_jepa.evaluation.runner import EvalSettings
from clin_jepa.federation import FederationConfig
from clin_jepa.io import atomic_write_bytes
from clin_jepa.models import ClinJEPA, ModelConfig, get_group_state, set_group_state
from clin_jepa.privacy.runs import check_run_id, run_path
from clin_jepa.train import build_optimizer, train_steps

# A simulation worker that kept every site it ever served grew with the rounds until it had met them all
# (bench/scale.py: +17 % over 10 rounds of 10 of 50 sites); a dropped site reloads its tensors from the
# on-disk cache and its optimizer moments from its state_dir, so dropping loses nothing.
MAX_CACHED_SITES = 8
_SITES: OrderedDict[Path, Site] = OrderedDict()


@dataclass(frozen=True)
class ServerSchedule:
    """The server's plan for one round: its phase, one lr per local step, and momentum 1 (the target
    encoder is the server's EMA; clients never move it)."""

    phase: Phase
    lrs: tuple[float, ...]
    step0: int
    rollout_steps: int = 0  # from the run config's curriculum (bounded there), 0 = the loss's

    def at(self, step: int) -> StepPlan:
        return StepPlan(self.phase, self.lrs[step - self.step0], 1.0, rollout_steps=self.rollout_steps)


def site_config_path(node_config: dict[str, Any], cfg: FederationConfig) -> Path:
    """The site this node plays: ``site-config`` (deployment) or ``partition-id`` into ``site-configs``."""
    if "site-config" in node_config:
        return cfg.resolve(str(node_config["site-config"]))
    if "partition-id" in node_config:
        index = int(node_config["partition-id"])
        if not 0 <= index < len(cfg.site_configs):
            raise ConfigError(f"node partition-id {index} has no site: run config site-configs lists "
                              f"{len(cfg.site_configs)} site(s); simulate that many SuperNodes "
                              f"(flwr run . --federation-config 'num-supernodes={len(cfg.site_configs)}')")
        return cfg.resolve(cfg.site_configs[index])
    raise ConfigError("node config gives neither 'site-config' (path to the site YAML) nor 'partition-id'; "
                      "start the SuperNode with --node-config 'site-config=\"/path/to/site.yaml\"'")


def get_site(path: Path) -> Site:
    """The cached :class:`Site` for a site config file (reloaded if the file changed)."""
    path = path.resolve()
    stamp = path.stat().st_mtime_ns if path.exists() else 0
    site = _SITES.get(path)
    if site is None or site.stamp != stamp:
        site = Site(load_site_config(path), stamp)
        _SITES[path] = site
    _SITES.move_to_end(path)
    while len(_SITES) > MAX_CACHED_SITES:
        _SITES.popitem(last=False)
    return site


@dataclass
class Site:
    cfg: SiteConfig
    stamp: int = 0
    _stats: tuple[str, SiteStatistics] | None = None  # (catalog fingerprint, statistics)
    _tensors: dict[tuple[str, int], SiteTensors] = field(default_factory=dict)
    _model: tuple[tuple[ModelConfig, torch.device, bool], ClinJEPA] | None = None
    _optim: tuple[str, int, torch.optim.Optimizer] | None = None
    _eval_tensors: tuple[tuple[str, int], SiteTensors] | None = None

    @property
    def name(self) -> str:
        return self.cfg.site

    def statistics(self) -> SiteStatistics:
        # keyed by the catalog in use: a process may serve runs of federations with different vocabularies
        catalog = load_concepts().fingerprint()
        if self._stats is None or self._stats[0] != catalog:
            self._stats = (catalog, site_statistics(self.cfg))
        return self._stats[1]

    def train_tensors(self, disc: Discretization, hours: int) -> SiteTensors:
        key = (disc.fingerprint(), hours)
        if key not in self._tensors:
            self._tensors = {key: build_site_tensors(self.cfg, disc, load_tasks(), hours).subset("train")}
        return self._tensors[key]

    def eval_tensors(self, disc: Discretization, hours: int) -> SiteTensors:
        """Every split's stays (probes fit on train, scores on held_out), built as ``clin-jepa evaluate``
        builds them; kept apart from the train cache, which rounds read every time."""
        key = (disc.fingerprint(), hours)
        if self._eval_tensors is None or self._eval_tensors[0] != key:
            self._eval_tensors = (key, build_site_tensors(self.cfg, disc, load_tasks(), hours))
        return self._eval_tensors[1]

    def evaluate(self, model_cfg: ModelConfig, disc: Discretization, groups: dict[str, dict[str, np.ndarray]],
                 fed: FederationConfig, min_patients: int) -> dict[str, float]:
        """The global model (every group) measured on this site's stays; only small-cell-safe aggregates
        come back. A fresh model: the training model and its optimizer are left as they are."""
        model = ClinJEPA(model_cfg)
        for g, state in groups.items():
            set_group_state(model, g, {k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        settings = EvalSettings(bootstrap=0, baselines=False, seed=fed.seed, device=str(self.device(fed)))
        tensors = self.eval_tensors(disc, settings.context + settings.horizon)
        return evaluate_site(model, tensors, settings, min_patients)

    def device(self, fed: FederationConfig) -> torch.device:
        """The run config's ``device`` when set, else this site's ``training.device``; a ConfigError
        (a Flower error reply, logged by the server) when it asks for CUDA this worker cannot see."""
        if fed.device:
            return resolve_device(fed.device, "run config device")
        return resolve_device(self.cfg.device, f"site {self.name}: training.device")

    def model(self, model_cfg: ModelConfig, fed: FederationConfig) -> ClinJEPA:
        """The site's model on its device, built (and compiled, with run config ``compile``) once and
        reused every round: each round only loads the server's groups into it."""
        key = (model_cfg, self.device(fed), fed.compile)
        if self._model is None or self._model[0] != key:
            model = ClinJEPA(model_cfg).to(key[1])
            if fed.compile:
                compile_modules(model.groups())
            self._model = (key, model)
            self._optim = None
        return self._model[1]

    def _optimizer_path(self, run_id: str) -> Path:
        return run_path(self.cfg.state_dir, "federated", check_run_id(run_id), "optimizer.pt")

    def optimizer(self, model: ClinJEPA, cur: CurriculumConfig, run_id: str,
                  rnd: int) -> torch.optim.Optimizer:
        """The optimizer carrying this site's moments from round ``rnd - 1`` of run ``run_id``, if any."""
        if self._optim is not None and self._optim[:2] == (run_id, rnd - 1):
            return self._optim[2]
        opt = build_optimizer(model, cur)
        path = self._optimizer_path(run_id)
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("round") == rnd - 1:
                opt.load_state_dict(saved["state"])
        return opt

    def keep_optimizer(self, opt: torch.optim.Optimizer, run_id: str, rnd: int) -> None:
        self._optim = (run_id, rnd, opt)
        buf = io.BytesIO()
        torch.save({"round": rnd, "state": opt.state_dict()}, buf)
        atomic_write_bytes(self._optimizer_path(run_id), buf.getvalue())

    def train_round(self, model_cfg: ModelConfig, disc: Discretization,
                    groups: dict[str, dict[str, np.ndarray]], schedule: ServerSchedule, n_steps: int,
                    fed: FederationConfig, run_id: str, rnd: int,
                    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
        """Load the server's groups, run ``n_steps`` local steps, return the trained groups and metrics."""
        tensors = self.train_tensors(disc, fed.hours)
        model = self.model(model_cfg, fed)
        device = self.device(fed)
        for g, state in groups.items():
            set_group_state(model, g, {k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        opt = self.optimizer(model, fed.curriculum, run_id, rnd)
        batch_size = fed.batch_size or self.cfg.batch_size
        monitors: dict[str, float] = {}
        dp = site_dp(self.cfg, fed)
        if dp is not None:  # sample-level DP: Poisson batches, Opacus, the site's ledger; no losses reported
            metrics = train_round_with_dp(self.cfg, dp, model, opt, tensors, schedule, schedule.step0,
                                          n_steps, fed, run_id, rnd, batch_size, device)
        else:
            batches = infinite_batches(tensors, batch_size, fed.seed, start_step=schedule.step0)
            metrics, _ = train_steps(model, batches, opt, schedule, schedule.step0, n_steps,
                                     loss_cfg=fed.loss, device=device, log_every=n_steps, seed=fed.seed,
                                     on_log=lambda _s, m: monitors.update(m))
        self.keep_optimizer(opt, run_id, rnd)
        trained = {g: {k: v.numpy() for k, v in get_group_state(model, g).items()}
                   for g in schedule.phase.trainable}
        # Losses are means over the round; monitors (collapse, effective rank, E/Ē drift) are from its
        # last step, where they describe the weights the site sends back.
        out = {k: float(v) for k, v in metrics.items() if k != "num_examples"}
        out.update({f"monitor-{k}": float(v) for k, v in monitors.items() if k not in metrics})
        out["num-examples"] = int(metrics["num_examples"])
        out["train-rows"] = len(tensors)
        return trained, out

