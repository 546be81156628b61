"""Server side of differential privacy.

* Client-level (central) DP: Flower's ``DifferentialPrivacy{Client,Server}SideFixedClipping`` wrap the
  phase-aware FedAvg with Flower's own RDP accountant (``flwr.supercore.privacy_accounting``; needs
  ``flwr[dp]``). Every site trains every round (no sampling), so each round is one Gaussian release with
  no amplification; Flower's accounted mode also needs a uniform average, so FedAvg weighs every reply
  by the constant ``dp-uniform-weight`` metric the clients add. Clipping (at the site, in float32 before
  the cast for transport, ``clin_jepa.federation.encode_reply``; or here, by Flower's wrapper on the
  decoded float32 reply) and noise (float32) act on the one ArrayRecord a round exchanges, i.e. exactly
  the parameter groups the phase trains; the frozen groups ride in the ConfigRecord and are not updated
  by the round.
* Sample-level DP happens at the sites; here their replies' cumulative ε are collected per round, and a
  reply saying ``dp-budget-exhausted = 1`` is logged with that status.

The accountant's state and the last ε of every site go into the checkpoint (``extra["accountants"]``) and
the client-level accountant is restored from it on resume, so ε continues instead of restarting.
"""

from __future__ import annotations

import json
import time
from logging import INFO, WARNING
from typing import Any

from flwr.app import Message
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from clin_jepa.errors import ConfigError
from clin_jepa.federation import FederationConfig
from clin_jepa.privacy.wire import BUDGET_EXHAUSTED, EPSILON, UNIFORM_WEIGHT

CLIENT_LEVEL = "client_level"
SAMPLE_LEVEL = "sample_level"
DPWrapper = DifferentialPrivacyClientSideFixedClipping | DifferentialPrivacyServerSideFixedClipping


def wrap_central_dp(strategy: Any, cfg: FederationConfig, n_sites: int,
                    saved: dict[str, Any] | None = None) -> DPWrapper:
    """Flower's fixed-clipping DP wrapper around ``strategy`` (a FedAvg), with an accountant restored from
    ``saved`` (a checkpoint's ``accountants[client_level]``) when given.

    A noise multiplier of 0 clips without noise and without accountant (ε is infinite and logged so).
    """
    if cfg.dp_noise_multiplier < 0 or cfg.dp_clipping_norm <= 0:
        raise ConfigError("run config dp-noise-multiplier must be >= 0 and dp-clipping-norm > 0")
    accountant = None
    if cfg.dp_noise_multiplier > 0:
        accountant = RdpAccountant(PrivacyConfig(
            target_delta=cfg.dp_central_delta, population_size=n_sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
        if saved:
            try:
                accountant.load_state_dict(saved)
            except ValueError as exc:
                raise ConfigError(f"client-level DP: the checkpoint's accountant does not fit this run "
                                  f"({exc}); resume with the same sites and dp-central-delta") from None
        strategy.weighted_by_key = UNIFORM_WEIGHT
    else:
        log(WARNING, "dp-central=%s with dp-noise-multiplier=0: updates are clipped but not noised; no "
            "client-level privacy guarantee (epsilon = inf)", cfg.dp_central)
    wrapper = (DifferentialPrivacyClientSideFixedClipping if cfg.dp_central == "client-fixed"
               else DifferentialPrivacyServerSideFixedClipping)
    return wrapper(strategy, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, n_sites, accountant=accountant)


# How often to look for a site node that an accounted client-level DP round is waiting for.
MISSING_POLL_S = 1.0


def missing_for_central_dp(outer: Strategy, site_nodes: dict[int, str], grid: Grid,
                           wait_s: float) -> list[str]:
    """The sites whose node is not connected when a round of accounted client-level DP is about to be
    configured, after waiting up to ``wait_s`` for them to come back (empty: every site is there, or the
    round is not accounted).

    Flower's accountant is calibrated to all ``num_sampled_clients`` sites: its wrapper raises
    ``ValueError`` when a round is configured for fewer, which would end the ServerApp. The caller stops
    the run cleanly after its last checkpoint instead (``server.server_app.central_dp_cannot_start``);
    ``resume-from`` continues once the node is back."""
    if not isinstance(outer, DPWrapper) or outer.accountant is None:
        return []
    deadline = time.monotonic() + wait_s
    while True:
        connected = set(grid.get_node_ids())
        missing = sorted(name for node, name in site_nodes.items() if node not in connected)
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(MISSING_POLL_S)


def budget_exhausted(msg: Message) -> str | None:
    """The reason a site gave for not training because its privacy budget is spent, or None."""
    if msg.has_error() or msg.content.array_records:
        return None
    metrics = {k: v for mr in msg.content.metric_records.values() for k, v in mr.items()}
    if metrics.get(BUDGET_EXHAUSTED) != 1:
        return None
    reasons = [str(cr.get("reason", "")) for cr in msg.content.config_records.values()]
    return next((r for r in reasons if r), f"privacy budget exhausted (ε={metrics.get(EPSILON)})")


def record_privacy(outer: Strategy, line: dict[str, Any], accountants: dict[str, Any]) -> None:
    """Add this round's privacy to the metrics ``line`` and update the checkpoint's ``accountants``:
    client-level ε (Flower's accountant) and the cumulative sample-level ε of each site that reported one
    in this round. The line never carries a site's ε over from an earlier round: a round a site trained
    without DP (or did not train) has no sample-level entry for it; the checkpoint keeps the last one."""
    sample = dict(accountants.get(SAMPLE_LEVEL, {}))
    this_round = {}
    for site, entry in line.get("sites", {}).items():
        if EPSILON in entry:
            sample[site] = {"epsilon": entry[EPSILON], "delta": entry.get("dp-delta"), "round": line["round"]}
            this_round[site] = entry[EPSILON]
    privacy: dict[str, Any] = {}
    if sample:
        accountants[SAMPLE_LEVEL] = sample
    if this_round:
        privacy[SAMPLE_LEVEL] = this_round
    if isinstance(outer, DPWrapper):
        spent = outer.privacy_spent()
        if spent is None:
            privacy[CLIENT_LEVEL] = {"epsilon": None, "noise_multiplier": 0.0}  # no noise: no guarantee
        else:
            accountants[CLIENT_LEVEL] = outer.accountant.state_dict()
            privacy[CLIENT_LEVEL] = {"epsilon": spent.epsilon, "delta": spent.delta,
                                     "releases": spent.num_releases,
                                     "noise_multiplier": outer.noise_multiplier,
                                     "clipping_norm": outer.clipping_norm}
    if privacy:
        line["privacy"] = privacy
        log(INFO, "Round %s privacy: %s", line["round"], json.dumps(privacy, sort_keys=True))
