"""Federated training as pure functions: run config, per-round plan, target EMA, outlier rule.

Nothing here imports Flower. The ServerApp and ClientApp read Flower's flat kebab-case run config through
:meth:`FederationConfig.from_run_config` (the one place where those keys are parsed) and ask
:func:`plan_round` what a round does, so the schedule can be tested, resumed and reproduced without a
federation running.

Rounds: round 0 is the statistics round (no training); training rounds are ``1..num_rounds``. The server
owns the curriculum *in rounds*: round ``r`` runs phase ``phase_at(r - 1, num_rounds)``, and its local steps
are the global steps ``[(r - 1) * K, r * K)`` of a ``num_rounds * K`` step budget for the learning rate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clin_jepa.aggregation import check_aggregation
from clin_jepa.config import TRANSPORT_DTYPES
from clin_jepa.curriculum import (
    HARD_SYNC,
    MAX_ROLLOUT_STEPS,
    PHASES,
    CurriculumConfig,
    boundary_actions,
    lr_at,
    phase_at,
)
from clin_jepa.errors import ConfigError, as_kind
from clin_jepa.loss_config import LossConfig
from clin_jepa.privacy.planning import RunDPOverrides

# The wire format of a round lives in clin_jepa.transport; its names stay importable from here.
from clin_jepa.transport import (  # noqa: F401
    decode_reply,
    encode_reply,
    join_groups,
    pack_arrays,
    split_groups,
    unpack_arrays,
    update_norm,
)

# flip: the update scaled by -9.9 (just under max-norm-ratio); claim: num-examples = 1e12; still: the
# weights sent come back untrained (a zero update)
FAULT_KINDS = ("raise", "nan", "scale", "sleep", "flip", "claim", "still")
DP_CENTRAL = ("off", "client-fixed", "server-fixed")

# The groups a client needs to run a phase, besides the ones it trains: E gives the context inputs when it
# is frozen, and Ē gives the targets whenever anything trains.
ENCODER, TARGET, PREDICTOR = "encoder", "target_encoder", "predictor"

# A federated run's peak lr, 1.5x the centralized default: a round averages the sites' local steps, so at
# an equal number of stays three sites make a third of the centralized run's sequential steps. On the
# learning benchmark (docs/federated-runs.md, "The federated run's own peak lr") 6e-3 / 9e-3 / 12e-3 gave
# 0.782 / 0.785 / 0.778 on seed 0, and 9e-3 gained +0.005 on average and on each of five seeds; at the
# demo's 3 x 600 patients it lost 0.004 on average (same paragraph), so the choice is the benchmark's.
FEDERATED_LR = 9e-3


def federated_curriculum(d: Mapping[str, Any] | None = None) -> CurriculumConfig:
    """A federated run's curriculum: ``d``'s fields over the centralized defaults, with the federated lr."""
    return CurriculumConfig.from_dict({"lr": FEDERATED_LR, **(d or {})})


@dataclass(frozen=True)
class FederationConfig:
    """Every tunable of a federated run. Paths are as given; resolve them with :meth:`resolve`.

    Invariants: ``num_rounds >= 1``, ``local_steps >= 1``, ``1 <= min_sites``; ``site_configs`` is the
    simulation's partition table (partition ``i`` plays ``site_configs[i]``).
    """

    num_rounds: int = 24
    local_steps: int = 10
    curriculum: CurriculumConfig = dataclasses.field(default_factory=federated_curriculum)
    # the sites' training objective (run-config keys ``loss-<field>``), as `clin-jepa train --set loss.*`
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    preset: str = "wide"
    seed: int = 0
    checkpoint_dir: str = "runs/federated"
    resume_from: str = ""
    min_sites: int = 2
    round_timeout: float = 600.0
    site_configs: tuple[str, ...] = ("site_configs/hospital_a.yaml", "site_configs/hospital_b.yaml",
                                     "site_configs/hospital_c.yaml")
    synth_if_missing: bool = True
    n_bins: int = 10
    hours: int = 72
    batch_size: int = 0
    max_norm_ratio: float = 10.0
    aggregation: str = "fedavg"  # clin_jepa.aggregation.AGGREGATORS: fedavg or one of Flower's robust ones
    aggregation_malicious: int = 1  # hostile sites a robust aggregation must outvote
    aggregation_beta: float = 0.2  # trimmed-mean: share cut from each side
    # the server's optimizer on each round's average (clin_jepa.aggregation.server_step; lr 1 and
    # momentum 0 = FedAvg); momentum on E bought +0.015 probe AUROC at the benchmark's budget
    server_lr: float = 1.0
    server_momentum: float = 0.8
    server_groups: str = "encoder"  # the groups it moves (comma-separated); the others are plain FedAvg
    weight_cap: float = 3.0  # a site weighs at most this x the lower median of the sites' patient counts
    dp_central: str = "off"
    dp_noise_multiplier: float = 0.0
    dp_clipping_norm: float = 1.0
    dp_central_delta: float = 1e-5
    dp_sample_epsilon: float = 0.0
    dp_sample_delta: float = 0.0
    dp_sample_max_grad_norm: float = 0.0
    dp_sample_noise_multiplier: float = 0.0
    dp_sample_mode: str = "hooks"
    dp_sample_accountant: str = "rdp"
    stop_after: int = 0
    inject_faults: str = ""
    signing_key: str = ""  # coordinator/signing.key: sign checkpoints, verify resume-from; "" = unsigned
    fraction_train: float = 1.0  # share of the site nodes trained per round (never fewer than min-sites)
    # float16 / bfloat16: replies carry the round's update (trained - received) in half precision, clipped
    # first in float32 under client-side DP clipping (encode_reply); float32: the trained weights
    transport_dtype: str = "float16"
    device: str = ""  # "" = each site's training.device; cpu | cuda | auto overrides it at every site
    compile: bool = False  # torch.compile the networks at the sites
    concept_catalog: str = ""  # the federation's concept catalog (a YAML path); "" = the packaged one
    tracking_uri: str = ""  # MLflow: "" = sqlite store in <checkpoint-dir>/mlflow, "off" = none, or a URI
    eval_every: int = 0  # evaluation rounds: 0 = after each phase and the last round, N = every N, -1 = never

    def __post_init__(self) -> None:
        for name in ("num_rounds", "local_steps", "min_sites", "n_bins", "hours"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run config {_kebab(name)}: must be >= 1, got {getattr(self, name)}")
        if self.n_bins < 2:
            raise ConfigError(f"run config n-bins: must be >= 2, got {self.n_bins}")
        if self.loss.rollout_steps > MAX_ROLLOUT_STEPS:  # each step is one more predictor pass per batch
            raise ConfigError(f"run config loss-rollout-steps: at most {MAX_ROLLOUT_STEPS}, "
                              f"got {self.loss.rollout_steps}")
        if self.stop_after < 0:
            raise ConfigError(f"run config stop-after: must be >= 0 (0 = run all rounds), "
                              f"got {self.stop_after}")
        if self.batch_size < 0:
            raise ConfigError(f"run config batch-size: must be >= 0 (0 = each site's own), "
                              f"got {self.batch_size}")
        if self.round_timeout <= 0:
            raise ConfigError(f"run config round-timeout: must be > 0 seconds, got {self.round_timeout}")
        if self.max_norm_ratio <= 1:
            raise ConfigError(f"run config max-norm-ratio: must be > 1, got {self.max_norm_ratio}")
        if not self.site_configs:
            raise ConfigError("run config site-configs: give at least one site config path")
        if self.dp_central not in DP_CENTRAL:
            raise ConfigError(f"run config dp-central: {self.dp_central!r} is not one of {list(DP_CENTRAL)}")
        if not 0 < self.dp_central_delta < 1:
            raise ConfigError(f"run config dp-central-delta: must be in (0, 1), got {self.dp_central_delta}")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"run config fraction-train: must be in (0, 1], got {self.fraction_train}")
        if self.fraction_train < 1 and self.dp_central != "off":
            # Flower's DP wrappers are built once with a fixed number of sampled clients, which scales the
            # noise; sampling a varying subset per round would silently change the guarantee.
            raise ConfigError("run config fraction-train < 1 cannot be combined with dp-central: the "
                              "client-level DP noise is calibrated to every site taking part each round")
        if self.transport_dtype not in TRANSPORT_DTYPES:
            raise ConfigError(f"run config transport-dtype: {self.transport_dtype!r} is not one of "
                              f"{list(TRANSPORT_DTYPES)}")
        if self.device not in ("", "cpu", "cuda", "auto"):
            raise ConfigError(f"run config device: {self.device!r} is not one of '', cpu, cuda, auto "
                              "('' = each site's training.device)")
        check_aggregation(self.aggregation, self.aggregation_malicious, self.aggregation_beta, self.min_sites,
                          self.dp_central, self.weight_cap)
        if not (0 < self.server_lr <= 10 and 0 <= self.server_momentum < 1):
            raise ConfigError(f"run config server-lr / server-momentum: need 0 < server-lr <= 10 and "
                              f"0 <= server-momentum < 1, got {self.server_lr} / {self.server_momentum}")
        if not self.server_groups_moved() or not set(self.server_groups_moved()) <= {"encoder", "predictor"}:
            raise ConfigError(f"run config server-groups: a comma-separated subset of encoder, predictor "
                              f"expected, got {self.server_groups!r}")
        if self.eval_every < -1:
            raise ConfigError(f"run config eval-every: must be >= -1 (-1 = never), got {self.eval_every}")
        self.dp_sample()  # validates the sample-level DP keys
        self.faults()  # validates the spec

    def server_groups_moved(self) -> tuple[str, ...]:
        """The parameter groups the server optimizer moves (``server-groups``)."""
        return tuple(g.strip() for g in self.server_groups.split(",") if g.strip())

    def dp_sample(self) -> RunDPOverrides:
        """Sample-level DP asked for by the run config (each site combines it with its own ``privacy:``)."""
        return RunDPOverrides(self.dp_sample_epsilon, self.dp_sample_delta, self.dp_sample_max_grad_norm,
                              self.dp_sample_noise_multiplier, self.dp_sample_mode, self.dp_sample_accountant)

    def faults(self) -> dict[tuple[str, int], str]:
        """Test hook ``inject-faults = "site:kind[+kind][@round],..."``: (site, round; 0 = every round) ->
        kind(s)."""
        out = {}
        for item in filter(None, (x.strip() for x in self.inject_faults.split(","))):
            site, _, rest = item.partition(":")
            kind, _, rnd = rest.partition("@")
            if not site or not set(kind.split("+")) <= set(FAULT_KINDS) or not (rnd == "" or rnd.isdigit()):
                raise ConfigError(f"run config inject-faults: {item!r} is not 'site:kind[+kind][@round]' "
                                  f"with kind one of {list(FAULT_KINDS)}")
            out[(site, int(rnd or 0))] = kind
        return out

    def fault_for(self, site: str, rnd: int) -> str:
        """The fault kind to inject at ``site`` in round ``rnd`` ("" for none)."""
        faults = self.faults()
        return faults.get((site, rnd), faults.get((site, 0), ""))

    @property
    def total_steps(self) -> int:
        """The step budget the learning-rate schedule spans."""
        return self.num_rounds * self.local_steps

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationConfig:
        """Parse Flower's flat run config (``[tool.flwr.app.config]`` plus ``--run-config`` overrides).

        Unknown keys are an error, so a misspelt override cannot silently do nothing.
        """
        raw = dict(run_config)
        unknown = sorted(set(raw) - set(_RUN_CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"run config: unknown key(s) {unknown}; known keys: {sorted(_RUN_CONFIG_KEYS)}")
        kwargs: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {"curriculum": {}, "loss": {}}
        for key, value in raw.items():
            target, typ = _RUN_CONFIG_KEYS[key]
            value = _coerce(key, value, typ)
            group, _, name = target.rpartition(".")
            if group:
                nested[group][name] = value
            else:
                kwargs[target] = value
        cur = nested["curriculum"]
        if "fractions" in cur:
            cur["fractions"] = _fractions(cur["fractions"])
        kwargs["curriculum"] = federated_curriculum(cur)
        kwargs["loss"] = _run_loss(nested["loss"])
        if "site_configs" in kwargs:
            kwargs["site_configs"] = tuple(p.strip() for p in kwargs["site_configs"].split(",") if p.strip())
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["curriculum"] = self.curriculum.to_dict()
        d["loss"] = self.loss.to_dict()
        d["site_configs"] = list(self.site_configs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FederationConfig:
        d = dict(d)
        d["curriculum"] = federated_curriculum(d.get("curriculum"))
        d["loss"] = LossConfig.from_dict(d.get("loss") or {})
        d["site_configs"] = tuple(d.get("site_configs", ()))
        return cls(**d)

    def catalog_path(self) -> Path | None:
        """The run's concept catalog file, or None for the packaged catalog."""
        return self.resolve(self.concept_catalog) if self.concept_catalog else None

    def resolve(self, path: str, base: Path | None = None) -> Path:
        """A run-config path made absolute against ``base`` (default: the working directory)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else ((base or Path.cwd()) / p).resolve()


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _field_type(f: dataclasses.Field) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool}.get(str(f.type), str)


def _run_loss(values: dict[str, Any]) -> LossConfig:
    try:
        return LossConfig.from_dict(values)
    except ConfigError as e:  # name the run-config key the coordinator typed, not the dataclass field
        field, sep, why = str(e).partition(": ")
        key = _kebab(field.replace(".", "-")) if field.startswith("loss.") else "loss-*"
        raise ConfigError(f"run config {key}: {why if sep else e}") from None


# run-config key -> (FederationConfig field, "curriculum.<field>" or "loss.<field>", type)
_RUN_CONFIG_KEYS: dict[str, tuple[str, type]] = {
    **{_kebab(f.name): (f.name, _field_type(f))
       for f in dataclasses.fields(FederationConfig) if f.name not in ("curriculum", "loss")},
    **{f"loss-{_kebab(f.name)}": (f"loss.{f.name}", _field_type(f)) for f in dataclasses.fields(LossConfig)},
    "site-configs": ("site_configs", str),
    "mode": ("curriculum.mode", str),
    "phase-fractions": ("curriculum.fractions", str),
    "lr": ("curriculum.lr", float),
    "min-lr": ("curriculum.min_lr", float),
    "lr-warmup": ("curriculum.lr_warmup", float),
    "weight-decay": ("curriculum.weight_decay", float),
    "base-momentum": ("curriculum.base_momentum", float),
    "align-momentum": ("curriculum.align_momentum", float),
    "frozen-fraction": ("curriculum.frozen_fraction", float),
    "finalize-lr": ("curriculum.finalize_lr", float),
    "finalize-rollout-steps": ("curriculum.finalize_rollout_steps", int),
}
RUN_CONFIG_KEYS: tuple[str, ...] = tuple(_RUN_CONFIG_KEYS)


def _coerce(key: str, value: Any, typ: type) -> Any:
    try:
        return as_kind(value, typ)
    except TypeError:
        raise ConfigError(f"run config {key}: expected {typ.__name__}, got {value!r}") from None


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise ConfigError(f"run config phase-fractions: expected {len(PHASES)} numbers separated by commas "
                          f"({', '.join(PHASES)}), got {text!r}") from None
    return values


@dataclass(frozen=True)
class RoundPlan:
    """What training round ``round`` does. ``download`` are the groups sent to clients (the ones they
    train plus the frozen ones they need), ``upload`` the groups clients return (exactly what they train).
    ``lrs`` holds the learning rate of each local step. ``momentum`` is applied once per round on the
    server: ``Ē <- m Ē + (1 - m) E_aggregated``.
    """

    round: int
    phase: str
    phase_index: int
    global_step: int
    local_steps: int
    total_steps: int
    lrs: tuple[float, ...]
    momentum: float
    hard_sync: bool
    upload: tuple[str, ...]
    download: tuple[str, ...]

    @property
    def frozen(self) -> tuple[str, ...]:
        """Groups sent for reading only (never returned)."""
        return tuple(g for g in self.download if g not in self.upload)


def plan_round(rnd: int, cfg: FederationConfig) -> RoundPlan:
    """The plan of training round ``rnd`` (1-based). Pure: a resumed server computes the same plan."""
    if not 1 <= rnd <= cfg.num_rounds:
        raise ConfigError(f"training round {rnd} is outside 1..{cfg.num_rounds}")
    phase = phase_at(rnd - 1, cfg.num_rounds, cfg.curriculum)
    upload = phase.trainable
    download = tuple(g for g in (ENCODER, TARGET, PREDICTOR) if g in upload or g != PREDICTOR)
    step0 = (rnd - 1) * cfg.local_steps
    # The server applies the EMA once per round for K local steps: compounding keeps the per-step
    # momentum of the schedule, so the target moves as far as it would centrally over the same steps.
    momentum = float(phase.ema_momentum) ** cfg.local_steps if phase.trains_encoder else 1.0
    return RoundPlan(
        round=rnd, phase=phase.name, phase_index=phase.index, global_step=step0,
        local_steps=cfg.local_steps, total_steps=cfg.total_steps,
        lrs=tuple(lr_at(s, cfg.total_steps, cfg.curriculum) for s in range(step0, step0 + cfg.local_steps)),
        momentum=momentum,
        hard_sync=HARD_SYNC in boundary_actions(rnd - 1, rnd, cfg.num_rounds, cfg.curriculum),
        upload=upload, download=download)


def sample_sites(nodes: list[int], rnd: int, cfg: FederationConfig) -> list[int]:
    """The nodes trained in round ``rnd``: all of them at ``fraction-train = 1``, else a uniform sample of
    ``max(min-sites, ceil(fraction x n))`` (at most n). Deterministic in (seed, round, node ids), so a
    resumed server asks the same sites as the uninterrupted run would."""
    nodes = sorted(nodes)
    k = min(len(nodes), max(cfg.min_sites, math.ceil(cfg.fraction_train * len(nodes))))
    if k >= len(nodes):
        return nodes
    # indices, not the ids themselves: Flower node ids are unsigned 64-bit and overflow an int64 array
    picked = np.random.default_rng([cfg.seed, rnd]).choice(len(nodes), size=k, replace=False)
    return sorted(nodes[int(i)] for i in picked)
