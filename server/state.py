"""The server's global model state, its per-round checkpoint, the metrics JSONL and resume.

The global state is three parameter groups as numpy arrays (E, Ē, P) plus the discretization and the
round last completed. After every training round it is written with ``clin_jepa.checkpoint`` (atomic) as
``<checkpoint-dir>/round_XXXX.pt`` and ``<checkpoint-dir>/ckpt.pt`` (the latest), and one JSON line is
appended to ``<checkpoint-dir>/metrics.jsonl``. ``resume-from`` reloads ``ckpt.pt`` and continues at the
next round with the same schedule; the schedule-defining settings must match.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clin_jepa.aggregation import ema_update, server_step
from clin_jepa.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, verified_loads
from clin_jepa.curriculum import STORED_DEFAULTS
from clin_jepa.data.stats import Discretization
from clin_jepa.data.tasks import load_tasks
from clin_jepa.errors import CheckpointError, ConfigError
from clin_jepa.federation import FederationConfig, RoundPlan
from clin_jepa.io import atomic_write_text
from clin_jepa.models import GROUPS, ClinJEPA, ModelConfig, get_group_state, preset
from clin_jepa.security.checkpoints import checkpoint_verifier, signing_context
from clin_jepa.security.signing import sign_file

LATEST = "ckpt.pt"
METRICS = "metrics.jsonl"
# Settings that define the schedule: a resumed run must agree on them or it would not continue the same run.
# The DP settings belong to it: the sites planned their noise, and the earlier rounds were released, under
# them (each site also pins its own DP settings and min-patients per run: client.privacy).
SCHEDULE_KEYS = ("num_rounds", "local_steps", "curriculum", "loss", "preset", "seed", "n_bins", "hours",
                 "batch_size", "dp_central", "dp_noise_multiplier", "dp_clipping_norm", "dp_central_delta",
                 "dp_sample_epsilon", "dp_sample_delta", "dp_sample_max_grad_norm",
                 "dp_sample_noise_multiplier", "dp_sample_mode", "dp_sample_accountant", "server_lr",
                 "server_momentum", "server_groups")


def model_config_for(cfg: FederationConfig, disc: Discretization) -> ModelConfig:
    """The preset sized to the shared discretization (its data dimensions come from the vocabulary);
    sized exactly as ``clin-jepa train`` sizes it, so equal seeds give equal initial weights."""
    return preset(cfg.preset, n_concepts=len(disc.concepts), n_treatments=len(disc.treatments),
                  n_bins=disc.n_bins, max_hours=max(cfg.hours, 128))


@dataclass
class ServerState:
    """Invariant: ``groups`` holds every group in ``GROUPS``; ``round`` is the last completed round
    (0 after the statistics round)."""

    cfg: FederationConfig
    disc: Discretization
    model_cfg: ModelConfig
    groups: dict[str, dict[str, np.ndarray]]
    round: int = 0
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))
    accountants: dict[str, Any] = field(default_factory=dict)  # privacy accounting (server.privacy)
    # site -> patients it reported in the statistics round: the server's aggregation weights (server.weights)
    site_patients: dict[str, int] = field(default_factory=dict)
    # the server optimizer's velocity per "<group>.<param>" (run config server-momentum > 0)
    velocity: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def initial(cls, cfg: FederationConfig, disc: Discretization) -> ServerState:
        """A fresh model, seeded by ``cfg.seed`` (``Ē`` starts equal to ``E``)."""
        model_cfg = model_config_for(cfg, disc)
        torch.manual_seed(cfg.seed)
        model = ClinJEPA(model_cfg)
        groups = {g: {k: v.numpy() for k, v in get_group_state(model, g).items()} for g in GROUPS}
        return cls(cfg, disc, model_cfg, groups)

    def flat(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Wire form of some groups: ``<group>.<param>`` -> array."""
        return {f"{g}.{k}": v for g in names for k, v in self.groups[g].items()}

    def begin_round(self, plan: RoundPlan) -> None:
        """Boundary actions that precede the round's training (the hard sync copies E into Ē)."""
        if plan.hard_sync:
            self.groups["target_encoder"] = ema_update(self.groups["target_encoder"],
                                                       self.groups["encoder"], 0.0)

    def end_round(self, plan: RoundPlan, aggregated: dict[str, np.ndarray] | None) -> None:
        """Install the aggregated groups (None: the round produced no update) and move Ē by EMA."""
        if aggregated is not None:
            if self.cfg.server_lr != 1.0 or self.cfg.server_momentum > 0:
                groups = self.cfg.server_groups_moved()
                moved = {k: v for k, v in aggregated.items() if k.split(".", 1)[0] in groups}
                aggregated = {**aggregated, **server_step(self.flat(plan.upload), moved, self.velocity,
                                                          self.cfg.server_lr, self.cfg.server_momentum)}
            for g in plan.upload:
                prefix = f"{g}."
                self.groups[g] = {k[len(prefix):]: np.asarray(v, dtype=self.groups[g][k[len(prefix):]].dtype)
                                  for k, v in aggregated.items() if k.startswith(prefix)}
            if "encoder" in plan.upload:
                self.groups["target_encoder"] = ema_update(self.groups["target_encoder"],
                                                           self.groups["encoder"], plan.momentum)
        self.round = plan.round

    def target_equals_encoder(self) -> bool:
        encoder = self.groups["encoder"]
        return all(np.array_equal(encoder[k], t) for k, t in self.groups["target_encoder"].items())

    def target_gap(self) -> float:
        """Max |E - Ē| over all parameters (0 exactly after a hard sync)."""
        return max(float(np.max(np.abs(self.groups["encoder"][k] - t)))
                   for k, t in self.groups["target_encoder"].items() if t.size)

    def checkpoint(self, step: int, phase: str, metrics: dict[str, Any], sites: list[str]) -> Checkpoint:
        weights = {g: {k: torch.from_numpy(np.array(v)) for k, v in s.items()}
                   for g, s in self.groups.items()}
        return Checkpoint(self.model_cfg, weights, curriculum=self.cfg.curriculum.to_dict(),
                          discretization=self.disc.to_dict(), tasks=[t.name for t in load_tasks()],
                          step=step, round=self.round, phase=phase,
                          metrics=metrics, extra={"federation": self.cfg.to_dict(), "run_id": self.run_id,
                                                  "accountants": self.accountants,
                                                  "site_patients": self.site_patients,
                                                  "server_velocity": {k: torch.from_numpy(np.array(v))
                                                                      for k, v in self.velocity.items()},
                                                  "sites": sites})


def save_round(state: ServerState, out_dir: Path, step: int, phase: str, metrics: dict[str, Any],
               sites: list[str]) -> Path:
    """Checkpoint the state (per-round file and ``ckpt.pt``), then append the metrics line."""
    ckpt = state.checkpoint(step, phase, metrics, sites)
    per_round = out_dir / f"round_{state.round:04d}.pt"
    save_checkpoint(per_round, ckpt)
    # ckpt.pt is signed before the round file: a crash in between must not leave a signed round newer
    # than the signed latest, which resume would refuse as a rollback.
    for path in (out_dir / LATEST, per_round):
        if path != per_round:
            _publish(per_round, path)
        if state.cfg.signing_key:  # right after each save: a crash leaves at most one file unsigned
            sign_file(path, state.cfg.resolve(state.cfg.signing_key),
                      signing_context(state.run_id, state.round, path))
    append_metrics(out_dir, metrics)
    return per_round


def _publish(src: Path, dst: Path) -> None:
    """Make ``dst`` the same bytes as ``src`` atomically: a hard link where the file system has them, else
    a copy. The checkpoint is serialized and fsynced once per round instead of twice (for ``base``,
    ~0.8 GB each). Every writer replaces files (``atomic_write_bytes``), never edits them in place, so
    the shared inode cannot change under either name."""
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def append_metrics(out_dir: Path, line: dict[str, Any]) -> None:
    """Append one JSON line. Lines are small, so a reader never sees a torn line in practice; a resumed
    run rewrites the file atomically without lines past its checkpoint (see :func:`truncate_metrics`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / METRICS).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def truncate_metrics(out_dir: Path, last_round: int) -> None:
    """Keep only metrics lines up to ``last_round`` (a run stopped after its JSONL line but before a
    later checkpoint must not leave lines the resumed run will write again)."""
    path = out_dir / METRICS
    if not path.exists():
        return
    kept = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and json.loads(ln).get("round", 0) <= last_round]
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))


def resume_state(cfg: FederationConfig, directory: Path) -> ServerState:
    """Load ``directory/ckpt.pt`` and check it continues a run with the same schedule."""
    path = directory / LATEST if directory.is_dir() else directory
    if cfg.signing_key:  # signature, role, round and run checked on the very bytes that are decoded
        signed: list[dict[str, Any]] = []
        verify = checkpoint_verifier(cfg.resolve(cfg.signing_key))
        with verified_loads(lambda p, raw: signed.append(verify(p, raw))):
            ckpt = load_checkpoint(path)
        if signed[0].get("run", ckpt.extra.get("run_id")) != ckpt.extra.get("run_id"):
            raise CheckpointError(f"{path}: signed for run {signed[0].get('run')!r} but holds run "
                                  f"{ckpt.extra.get('run_id')!r}; refusing to resume")
    else:
        ckpt = load_checkpoint(path)
    stored = ckpt.extra.get("federation")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: not a federated checkpoint (no federation config in it)")
    stored = {**stored, "curriculum": {**STORED_DEFAULTS, **(stored.get("curriculum") or {})}}
    old = FederationConfig.from_dict(stored).to_dict()
    new = cfg.to_dict()
    diff = _schedule_diff(old, new)
    if diff:
        raise ConfigError(f"resume-from {path}: the run config differs from the checkpoint's in "
                          f"{'; '.join(diff)}; a resumed run must keep the schedule")
    if ckpt.discretization is None:
        raise CheckpointError(f"{path}: checkpoint has no discretization")
    disc = Discretization.from_dict(ckpt.discretization)
    groups = {g: {k: v.numpy() for k, v in ckpt.weights[g].items()} for g in GROUPS}
    velocity = _velocity(ckpt.extra.get("server_velocity"), groups, path)
    return ServerState(cfg, disc, ckpt.model_config, groups, round=ckpt.round,
                       run_id=str(ckpt.extra.get("run_id", secrets.token_hex(8))),
                       accountants=dict(ckpt.extra.get("accountants") or {}),
                       site_patients={str(k): int(v)
                                      for k, v in (ckpt.extra.get("site_patients") or {}).items()},
                       velocity=velocity)


def _velocity(stored: Any, groups: dict[str, dict[str, np.ndarray]], path: Path) -> dict[str, np.ndarray]:
    """The server optimizer's velocity from a checkpoint, each entry the shape of the parameter it moves."""
    shapes = {f"{g}.{k}": v.shape for g, s in groups.items() for k, v in s.items()}
    stored = stored or {}
    if not isinstance(stored, dict) or any(
            not isinstance(v, torch.Tensor) or shapes.get(k) != tuple(v.shape) for k, v in stored.items()):
        raise CheckpointError(f"{path}: its server optimizer velocity does not match the model's parameters; "
                              "the checkpoint is damaged or was not written by this server")
    return {str(k): v.numpy().astype(np.float64) for k, v in stored.items()}


def _schedule_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key (old -> new)`` per schedule setting that differs; curriculum and loss field by field."""
    out = []
    for key in SCHEDULE_KEYS:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{f.replace('_', '-')} ({a.get(f)!r} -> {b.get(f)!r})"
                    for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
        elif a != b:
            out.append(f"{key.replace('_', '-')} ({a!r} -> {b!r})")
    return out
