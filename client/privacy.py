"""Client side of differential privacy: a site's DP-SGD round with its ledger, the reply of a site whose
budget is spent, and Flower's client-side clipping mod applied only when the server's DP wrapper asks.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from clin_jepa.config import SiteConfig
from clin_jepa.data.tokenize import SiteTensors
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
                                     settings=dp, expected_batch_size=batch_size, rnd=rnd, device=device)
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


def clip_if_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` when the message carries the DP wrapper's clipping norm (client-side
    fixed clipping); otherwise, and for a budget-exhausted reply (nothing to clip), the handler's reply."""
    config = next(iter(msg.content.config_records.values()), None)
    if config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    inner: list[Message] = []

    def run(m: Message, c: Context) -> Message:
        inner.append(call_next(m, c))
        return inner[-1]

    clipped = fixedclipping_mod(msg, context, run)
    if inner and not inner[0].has_error() and not inner[0].content.array_records:
        return inner[0]
    return clipped
