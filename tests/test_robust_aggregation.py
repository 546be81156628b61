"""Robust aggregation and server-set weights, on Flower's own strategies with real Messages (fast).

The attacks end to end under `flwr run` are in test_robust_aggregation_flower.py (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from clin_jepa.aggregation import required_replies, site_weights
from clin_jepa.errors import ConfigError
from clin_jepa.federation import FederationConfig
from clin_jepa.privacy.wire import UNIFORM_WEIGHT
from server.checks import screen_replies
from server.strategy import build_strategy
from server.weights import apply_server_weights

SITES = {1: "a", 2: "b"}


def _reply(node: int, arrays: dict[str, np.ndarray], claimed: float) -> Message:
    meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="", created_at=0.0, ttl=60.0, message_type="train")
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": claimed, "loss": 1.0})})
    return Message(metadata=meta, content=content)


def _honest(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.float32(0.1) + np.float32(0.01) * rng.standard_normal(64, dtype=np.float32) for _ in range(n)]


def _round(attack: float, claimed: float, n_honest: int = 2,
           **cfg: object) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sent zeros, ``n_honest`` honest updates near 0.1 and the last site's update x ``attack`` claiming
    ``claimed`` examples (and 1e12 patients in the statistics round): screen, server weights, the
    configured Flower strategy. Returns (aggregate, honest mean, the weights log)."""
    sent = {"p.w": np.zeros(64, np.float32)}
    honest = _honest(n_honest + 1)
    sites = {n: f"s{n}" for n in range(1, n_honest + 2)}
    replies = [_reply(n, {"p.w": honest[n - 1]}, 16) for n in range(1, n_honest + 1)]
    replies.append(_reply(n_honest + 1, {"p.w": np.float32(attack) * honest[-1]}, claimed))
    fed = FederationConfig(**{"min_sites": n_honest + 1, **cfg})
    screened = screen_replies(replies, asked=sites, sent=sent, max_norm_ratio=fed.max_norm_ratio)
    assert len(screened.accepted) == n_honest + 1, screened.problems  # just under max-norm-ratio: passes
    strategy = build_strategy(fed, None, sites)  # the state is only read when configuring a round
    patients = {name: 40 for name in sites.values()} | {sites[n_honest + 1]: 10**12}
    log = apply_server_weights(screened.accepted, strategy.weighted_by_key, sites, patients, fed.weight_cap)
    arrays, _ = strategy.aggregate_train(1, screened.accepted)
    return arrays["p.w"].numpy(), np.mean(honest[:-1], axis=0), log


def test_a_claimed_count_is_ignored_and_the_patient_weight_capped():
    agg, _, log = _round(attack=1.0, claimed=1e12)
    assert log[3] == {"claimed_weight": 1e12, "weight": 120.0}  # 3 x the lower median (40), not 1e12
    assert log[1]["weight"] == 40.0
    honest = _honest(3)
    np.testing.assert_allclose(agg, (40 * honest[0] + 40 * honest[1] + 120 * honest[2]) / 200, rtol=1e-5)


@pytest.mark.parametrize("aggregation,extra", [("median", {}), ("trimmed-mean", {"aggregation_beta": 0.34})])
def test_a_flipped_update_wrecks_fedavg_but_not_a_robust_aggregator(aggregation, extra):
    fedavg, honest, _ = _round(attack=-9.5, claimed=1e12)
    robust, _, _ = _round(attack=-9.5, claimed=1e12, aggregation=aggregation, **extra)
    step = float(np.linalg.norm(honest))
    # FedAvg: the attacker (capped at 3 x 40 patients) drags the step backwards, ~5x its honest length
    assert np.linalg.norm(fedavg - honest) > 3 * step
    assert float(fedavg @ honest) < 0
    # median / trimmed mean of 3 lie between the two honest values, coordinate by coordinate
    assert np.linalg.norm(robust - honest) < 0.2 * step


@pytest.mark.parametrize("aggregation", ["krum", "multi-krum"])
def test_krum_picks_honest_replies(aggregation):
    agg, honest, _ = _round(attack=-9.5, claimed=1e12, n_honest=4, aggregation=aggregation)
    assert np.linalg.norm(agg - honest) < 0.2 * np.linalg.norm(honest)


def test_under_central_dp_every_site_weighs_one_whatever_it_claims():
    sent = {"p.w": np.zeros(4, np.float32)}
    replies = [_reply(n, {"p.w": np.full(4, 0.1, np.float32)}, 16) for n in (1, 2)]
    replies[1].content["metrics"][UNIFORM_WEIGHT] = 1e12  # Flower's wrapper would refuse unequal weights
    accepted = screen_replies(replies, asked=[1, 2], sent=sent, max_norm_ratio=10).accepted
    apply_server_weights(accepted, UNIFORM_WEIGHT, SITES, {"a": 40, "b": 400}, 3.0)
    assert [m.content["metrics"][UNIFORM_WEIGHT] for m in accepted] == [1.0, 1.0]


def test_site_weights_bound_a_liar_also_with_two_sites():
    assert site_weights({"a": 40, "b": 10**12}, 3.0) == {"a": 40.0, "b": 120.0}
    assert site_weights({"a": 40, "b": 50, "c": 0}, 2.0) == {"a": 40.0, "b": 50.0, "c": 1.0}
    assert site_weights({"a": 10, "b": 20, "c": 30}, 3.0) == {"a": 10.0, "b": 20.0, "c": 30.0}


@pytest.mark.parametrize("cfg,words", [
    ({"aggregation": "median", "min_sites": 2}, "needs at least 3"),
    ({"aggregation": "trimmed-mean", "min_sites": 3}, "needs at least 5"),  # int(0.2 x 3) = 0 trimmed
    ({"aggregation": "krum", "min_sites": 4}, "needs at least 5"),
    ({"aggregation": "multi-krum", "min_sites": 4}, "needs at least 5"),
    ({"aggregation": "bulyan", "min_sites": 5}, "needs at least 7"),
    ({"aggregation": "median", "min_sites": 3, "dp_central": "server-fixed"}, "calibrated to a plain"),
    ({"aggregation": "median", "min_sites": 3, "aggregation_malicious": 0}, "at least 1 hostile"),
    ({"aggregation": "trimmed-mean", "min_sites": 9, "aggregation_beta": 0.5}, "(0, 0.5)"),
    ({"aggregation": "mean-ish"}, "not one of"),
    ({"weight_cap": 0.5}, "weight-cap"),
    ({"weight_cap": float("inf")}, "weight-cap"),
])
def test_unsound_aggregation_is_refused_with_a_reason(cfg, words):
    with pytest.raises(ConfigError, match=None) as err:
        FederationConfig(**cfg)
    assert words in str(err.value)


def test_required_replies_and_accepted_combinations():
    assert [required_replies(a, 1, 0.34) for a in ("fedavg", "median", "trimmed-mean", "krum", "bulyan")] == [
        1, 3, 3, 5, 7]
    assert required_replies("median", 2, 0.2) == 5 and required_replies("trimmed-mean", 2, 0.2) == 10
    FederationConfig(aggregation="median", min_sites=3, dp_sample_epsilon=4.0)  # sample-level DP: fine
    FederationConfig(aggregation="fedavg", dp_central="server-fixed")


def test_a_node_cannot_play_a_site_its_key_was_not_registered_for():
    from flwr.proto.node_pb2 import NodeInfo

    from server.stats_round import name_mismatch, registered_names

    class Listing:  # what a deployed Grid's get_nodes() returns: the SuperLink's NodeInfo records
        def get_nodes(self):
            return [NodeInfo(node_id=5, name="hospital_a"), NodeInfo(node_id=6, name="hospital_b"),
                    NodeInfo(node_id=7)]  # a simulated node has no registered name

    registered = registered_names(Listing())
    assert registered == {5: "hospital_a", 6: "hospital_b"}
    sites = {"hospital_a", "hospital_b"}
    assert "registered as 'hospital_b'" in name_mismatch(6, "hospital_a", registered, sites)
    assert name_mismatch(5, "hospital_a", registered, sites) is None
    assert name_mismatch(7, "hospital_a", registered, sites) is None  # nothing to bind to (simulation)
    # keys registered under labels that are not site names (node-1, …) bind nothing
    assert name_mismatch(8, "hospital_a", {8: "node-1"}, sites) is None
