"""The run config's ``loss-*`` keys reach the sites' training, with and without sample-level DP.

Before these keys a federated run always trained with the default objective, whatever its centralized
twin was given: a variant judged on the learning benchmark compared two different objectives.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from site_round import site_round, small_site

from clin_jepa.errors import ConfigError
from clin_jepa.federation import FederationConfig
from clin_jepa.losses import LossConfig

REPO = Path(__file__).resolve().parents[1]
BASE = {"preset": "tiny", "hours": 30, "batch_size": 4, "num_rounds": 10, "local_steps": 2}


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[g][k], b[g][k]) for g in a for k in a[g])


def test_run_config_loss_keys_parse_into_the_sites_objective():
    fed = FederationConfig.from_run_config({"loss-concept-block-hours": 6, "loss-context-mask": 0,
                                            "loss-jepa-to-encoder": False})
    assert fed.loss == LossConfig(concept_block_hours=6, context_mask=0.0, jepa_to_encoder=False)
    assert FederationConfig.from_dict(fed.to_dict()) == fed
    stored = {k: v for k, v in FederationConfig().to_dict().items() if k != "loss"}  # from before the keys
    assert FederationConfig.from_dict(stored).loss == LossConfig()
    for bad, words in [({"loss-context-mask": 1.5}, "loss-context-mask: a probability"),
                       ({"loss-jitter-bins": 1.5}, "loss-jitter-bins: expected int"),
                       ({"loss-rollout-steps": 25}, "loss-rollout-steps: at most 24"),
                       ({"loss-concept-block-hours": -1}, "loss-concept-block-hours: hours per hidden block"),
                       ({"loss-obs-weight": -1.0}, "loss-\\*: weights")]:
        with pytest.raises(ConfigError, match=f"^run config {words}"):
            FederationConfig.from_run_config(bad)


@pytest.mark.timeout(120)
def test_a_site_round_trains_the_run_configs_objective(tmp_path):
    site = small_site(tmp_path)
    fed = FederationConfig(**BASE)
    _, first, _ = site_round(site, fed, 2, "first")
    _, again, _ = site_round(site, fed, 2, "again")  # the same objective in another run: the same weights
    plain = dataclasses.replace(fed, loss=LossConfig(context_mask=0.0, concept_dropout=0.0, value_jitter=0.0))
    _, other, _ = site_round(site, plain, 2, "plain")
    assert _same(first, again)
    assert not _same(first, other), "the site trained with the default objective, not the run config's"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode,loss", [
    # ghost clipping needs the predictor called once per step: the default objective (rollout 2, look-ahead
    # targets) is refused, a one-step objective trains, its idle look-ahead heads left out
    ("ghost", LossConfig(rollout_steps=1, horizon_weight=0.0)),
    ("hooks", LossConfig(obs_weight=0.0)),  # the observation head idle
])
def test_a_dp_site_round_trains_the_run_configs_objective(tmp_path, mode, loss):
    site = small_site(tmp_path)
    fed = FederationConfig(**BASE, dp_sample_epsilon=4.0, dp_sample_mode=mode)
    if mode == "ghost":
        with pytest.raises(ConfigError, match="ghost"):
            site_round(site, fed, 2, "default")
    sent, trained, metrics = site_round(site, dataclasses.replace(fed, loss=loss), 2, "variant")
    assert metrics["num-examples"] > 0
    changed = {f"{g}.{k}" for g, state in trained.items() for k, v in state.items()
               if not np.array_equal(v, sent[g][k])}
    idle = {"predictor.ahead" if mode == "ghost" else "predictor.obs_head"}
    assert {k.rsplit(".", 1)[0] for k in changed} & idle == set()  # untrained, not noised
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("predictor.") for k in changed)


def test_the_clientapp_and_the_run_config_load_without_torch():
    # A simulation loads the ClientApp in its driver before Ray starts, and every worker parses the run
    # config on each message; torch (~1 s, hundreds of MB) waits for the first training round.
    code = ("import sys, client.client_app, clin_jepa.federation, clin_jepa.site_policy; "
            "print(sorted(m for m in ('torch', 'opacus') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
