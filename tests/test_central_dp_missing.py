"""Client-level DP with a site's node missing when a round is to be configured: Flower's accounted
wrapper refuses to configure a round for fewer than all its sites (``ValueError``, which ended the
ServerApp); the server now waits for the node, then stops the run cleanly after its last checkpoint.
The drill on real processes (stop, then resume once the node is back) is
``tests/test_deploy_e2e.py::test_central_dp_run_stops_cleanly_without_a_site_and_resumes``."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from clin_jepa.data.stats import SiteStatistics, quantile_edges
from clin_jepa.federation import FederationConfig, plan_round
from server.server_app import central_dp_cannot_start
from server.state import ServerState
from server.strategy import build_strategy, wrap_for_privacy
from tests.reply_grid import ReplyGrid, as_serverapp_process

SITES = {1: "a", 2: "b", 3: "c"}


def _setup(dp_central: str = "server-fixed", noise: float = 1.0):
    stats = SiteStatistics.from_arrays({**SiteStatistics.empty().to_arrays(), "n_subjects": np.array([5]),
                                        "n_stays": np.array([5])})
    stats.hist[:16] = 1
    cfg = FederationConfig(num_rounds=2, local_steps=1, preset="tiny", hours=24, min_sites=2,
                           round_timeout=2.0, dp_central=dp_central, dp_noise_multiplier=noise,
                           site_configs=("a.yaml", "b.yaml", "c.yaml"))
    state = ServerState.initial(cfg, quantile_edges(stats, cfg.n_bins))
    strategy = build_strategy(cfg, state, SITES)
    return cfg, state, strategy, wrap_for_privacy(strategy, cfg)


def test_flowers_accounted_wrapper_refuses_a_round_without_every_site(monkeypatch):
    as_serverapp_process(monkeypatch)
    cfg, state, _, outer = _setup()
    arrays = ArrayRecord({k: Array(v) for k, v in state.flat(plan_round(1, cfg).upload).items()})
    with pytest.raises(ValueError, match="num_sampled_clients"):  # what ended the ServerApp before
        list(outer.configure_train(1, arrays, ConfigRecord(), ReplyGrid(silent=[1, 2])))


def test_a_missing_site_stops_an_accounted_run_after_waiting_for_it():
    cfg, _, strategy, outer = _setup()
    t0 = time.monotonic()
    why = central_dp_cannot_start(ReplyGrid(silent=[1, 2]), cfg, strategy, outer)  # node 3 (c) is gone
    assert why is not None and "all 3 sites and the node of c has not been connected for 2 s" in why
    assert time.monotonic() - t0 >= cfg.round_timeout  # it waited for the node first
    assert central_dp_cannot_start(ReplyGrid(silent=[1, 2, 3]), cfg, strategy, outer) is None


@pytest.mark.parametrize(("dp_central", "noise"), [("off", 0.0), ("server-fixed", 0.0)])
def test_runs_without_an_accountant_go_on_with_the_sites_present(dp_central, noise):
    cfg, _, strategy, outer = _setup(dp_central, noise)  # no accountant: Flower aggregates who replied
    t0 = time.monotonic()
    assert central_dp_cannot_start(ReplyGrid(silent=[1, 2]), cfg, strategy, outer) is None
    assert time.monotonic() - t0 < 1.0
