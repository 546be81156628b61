"""Client-level DP with a site's node missing when a round is configured: Flower's accounted wrapper
refuses to configure a round for fewer than all its sites (``ValueError``, which ended the ServerApp);
the server now waits for the node, then skips the round with a logged reason and writes its checkpoint.
The drill on real processes is ``tests/test_deploy_e2e.py::test_central_dp_round_without_a_site...``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from clin_jepa.data.stats import SiteStatistics, quantile_edges
from clin_jepa.federation import FederationConfig, plan_round
from server import server_app
from server.state import ServerState
from server.strategy import build_strategy, wrap_for_privacy
from tests.reply_grid import ReplyGrid, as_serverapp_process

SITES = {1: "a", 2: "b", 3: "c"}


def _setup(tmp_path):
    stats = SiteStatistics.from_arrays({**SiteStatistics.empty().to_arrays(), "n_subjects": np.array([5]),
                                        "n_stays": np.array([5])})
    stats.hist[:16] = 1
    cfg = FederationConfig(num_rounds=2, local_steps=1, preset="tiny", hours=24, min_sites=2,
                           round_timeout=2.0, dp_central="server-fixed", dp_noise_multiplier=1.0,
                           site_configs=("a.yaml", "b.yaml", "c.yaml"), checkpoint_dir=str(tmp_path))
    state = ServerState.initial(cfg, quantile_edges(stats, cfg.n_bins))
    strategy = build_strategy(cfg, state, SITES)
    return cfg, state, strategy, wrap_for_privacy(strategy, cfg)


def test_flowers_accounted_wrapper_refuses_a_round_without_every_site(tmp_path, monkeypatch):
    as_serverapp_process(monkeypatch)
    cfg, state, strategy, outer = _setup(tmp_path)
    arrays = ArrayRecord({k: Array(v) for k, v in state.flat(plan_round(1, cfg).upload).items()})
    with pytest.raises(ValueError, match="num_sampled_clients"):  # what ended the ServerApp before
        list(outer.configure_train(1, arrays, ConfigRecord(), ReplyGrid(silent=[1, 2])))


def test_a_round_without_every_site_is_skipped_and_checkpointed(tmp_path, monkeypatch, caplog):
    as_serverapp_process(monkeypatch)
    cfg, state, strategy, outer = _setup(tmp_path)
    grid = ReplyGrid(silent=[1, 2])  # node 3 (site c) is not connected
    before = {g: {k: v.copy() for k, v in p.items()} for g, p in state.groups.items()}
    with caplog.at_level("WARNING"):
        line = server_app.run_round(grid, cfg, state, strategy, outer, plan_round(1, cfg), tmp_path)
    assert grid.sent == []  # nothing was configured or sent
    assert "c not connected: round skipped" in line["skipped"] and "round skipped" in caplog.text
    assert line["updated"] is False and line["sites"]["c"]["status"] == "not-connected"
    assert line["wait_s"] >= cfg.round_timeout  # it waited for the node first
    assert all(np.array_equal(before[g][k], v) for g, p in state.groups.items() for k, v in p.items())
    assert outer.privacy_spent().num_releases == 0  # no release, no ε
    saved = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert saved["round"] == 1 and saved["skipped"] == line["skipped"]
    assert (tmp_path / "ckpt.pt").exists()  # resumable from here
