"""Client side of differential privacy: a site's DP-SGD round with its ledger, the reply of a site whose
budget is spent, and the bound of client-side fixed clipping when the server's DP wrapper asks for it.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from clin_jepa.config import SiteConfig
from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.errors import ConfigError
from clin_jepa.federation import FederationConfig
from clin_jepa.models import ClinJEPA
from clin_jepa.privacy import (
    BudgetExhausted,
    DPSettings,
    PrivacyLedger,
    pin_run_settings,
    private_train_steps,
    resolve_dp_settings,
    sample_rate,
)
from clin_jepa.privacy.sampling import n_patients
from clin_jepa.privacy.wire import BUDGET_EXHAUSTED, UNIFORM_WEIGHT
from clin_jepa.train import Schedule


def site_dp(cfg: SiteConfig, fed: FederationConfig) -> DPSettings | None:
    """Sample-level DP of this site in this run (its ``privacy:`` block and the run config), or None."""
    return resolve_dp_settings(cfg.privacy, fed.dp_sample())


def pin_privacy_settings(cfg: SiteConfig, fed: FederationConfig, run_id: str, min_patients: int) -> None:
    """Refuse a round of run ``run_id`` whose DP settings or ``min-patients`` differ from the run's first
    round at this site. The lifetime budget is left out: the ledger enforces the current one each round,
    and a hospital may lower it at any time."""
    dp = site_dp(cfg, fed)
    pinned = None if dp is None else {k: v for k, v in asdict(dp).items() if not k.startswith("lifetime_")}
    pin_run_settings(cfg.state_dir, run_id, {"dp": pinned, "min-patients": min_patients})


def train_round_with_dp(cfg: SiteConfig, dp: DPSettings, model: ClinJEPA, optimizer: torch.optim.Optimizer,
                        tensors: SiteTensors,
                        schedule: Schedule, step0: int, n_steps: int, fed: FederationConfig, run_id: str,
                        rnd: int, batch_size: int, device: str) -> dict[str, float]:
    """One round of DP-SGD; the noise is planned once for every round of the run (``total_steps``).

    Raises :class:`BudgetExhausted` before training when the round would exceed the site's ε.
    """
    ledger = PrivacyLedger.open(cfg.state_dir, site=cfg.site, run_id=run_id, settings=dp,
                                rate=sample_rate(batch_size, n_patients(tensors)),
                                planned_steps=fed.total_steps)
    metrics, _ = private_train_steps(model, optimizer, tensors, schedule, step0, n_steps, ledger=ledger,
                                     settings=dp, expected_batch_size=batch_size, rnd=rnd, loss_cfg=fed.loss,
                                     seed=fed.seed, device=device)
    return metrics


def central_dp_metrics(fed: FederationConfig) -> dict[str, int]:
    """Extra reply metrics under client-level DP (the constant weight Flower's accountant needs)."""
    return {UNIFORM_WEIGHT: 1} if fed.dp_central != "off" else {}


def budget_exhausted_reply(msg: Message, exc: BudgetExhausted) -> Message:
    """The reply of a site that does not train: no arrays, its ε so far and ``dp-budget-exhausted = 1``."""
    metrics = {k: v for k, v in exc.metrics.items() if isinstance(v, (int, float))}
    metrics[BUDGET_EXHAUSTED] = 1
    return Message(RecordDict({"metrics": MetricRecord(metrics),
                               "status": ConfigRecord({"reason": str(exc)})}), reply_to=msg)


def client_clipping_norm(config: ConfigRecord, fed: FederationConfig) -> float | None:
    """The L2 bound this site clips its round's update to, or None (no client-side clipping).

    Flower's ``DifferentialPrivacyClientSideFixedClipping`` puts its clipping norm into every training
    message (``KEY_CLIPPING_NORM``). The site clips the update itself, in float32 and before the cast for
    transport (``clin_jepa.federation.encode_reply``), instead of Flower's ``fixedclipping_mod``, which
    clips whatever the handler returns as if it were weights and so cannot clip a half-precision update.
    Under ``dp-central = client-fixed`` a message without the norm is an error (never an unclipped reply),
    and where the message and the run config disagree, the smaller bound is used.
    """
    asked = config.get(KEY_CLIPPING_NORM)
    if asked is None:
        if fed.dp_central == "client-fixed":
            # a ConfigError: the refusal itself (not patient data) is what the coordinator must read
            raise ConfigError("run config dp-central = client-fixed, but the training message carries no "
                               "clipping norm: refusing to send an unclipped update")
        return None
    norm = float(asked)
    return min(norm, fed.dp_clipping_norm) if fed.dp_central == "client-fixed" else norm
