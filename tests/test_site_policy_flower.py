"""The site's limits and the test-hook opt-in through the real ClientApp: real Flower Messages and Contexts,
training messages built by the real server code (as in test_reply_allowlist.py). On real SuperNodes:
test_deploy_e2e.py::test_test_hooks_act_only_at_an_opted_in_node; the opted-in simulation: the fault
drill in test_flower_sim.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fixtures import random_events, write_meds, write_site_config
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.metadata import Metadata
from test_site_policy import AT_AND_PAST_LIMIT, LIMITS, SAFE_VALUES

from client.client_app import app
from clin_jepa.config import load_site_config
from clin_jepa.data.stats import compute_site_statistics, quantile_edges
from clin_jepa.federation import FederationConfig, plan_round
from clin_jepa.privacy.wire import UNIFORM_WEIGHT
from clin_jepa.site_policy import ALLOW_TEST_FAULTS, REFUSED_CODE, RUN_CONFIG_RULES, SIMULATION_OPT_IN_ENV
from server.state import ServerState
from server.strategy import ClinJepaFedAvg

NODE = 7
# A run within LIMITS (test_site_policy.py), as the coordinator would start it.
BASE = {"preset": "tiny", "hours": 48, "num-rounds": 5, "local-steps": 1, "batch-size": 4,
        "phase-fractions": "0.2,0.2,0.2,0.2,0.2", "synth-if-missing": False, "min-sites": 1}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("policy")
    data = write_meds(root / "data", random_events(24, seed=0, hours=48))
    return write_site_config(root / "hospital_x.yaml", data, root / "state", site="hospital_x", limits=LIMITS)


@pytest.fixture(scope="module")
def round_one(site) -> RecordDict:
    """What the server sends this site in training round 1 of BASE."""
    cfg = FederationConfig.from_run_config({**BASE, "site-configs": str(site)})
    stats = compute_site_statistics(load_site_config(site))
    state = ServerState.initial(cfg, quantile_edges(stats, cfg.n_bins))
    plan = plan_round(1, cfg)
    state.begin_round(plan)
    config = ClinJepaFedAvg(cfg, state, {NODE: "hospital_x"}).round_config(1)
    return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.flat(plan.upload).items()}),
                       "config": config})


def ask(content: RecordDict, run_config: dict, node_config: dict, message_type: str = "train") -> Message:
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=NODE, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600.0, message_type=message_type)
    context = Context(run_id=1, node_id=NODE, node_config=node_config, state=RecordDict(),
                      run_config={**BASE, **run_config})
    return app(Message(content, metadata=meta), context)


def with_config(content: RecordDict, **changes: object) -> RecordDict:
    """The same training message with some of its ConfigRecord entries changed."""
    return RecordDict({"arrays": content["arrays"],
                       "config": ConfigRecord({**dict(content["config"]), **changes})})


def deployed(site: Path, **extra: object) -> dict:
    """The node config deploy/hospital/start-supernode.sh gives a hospital's SuperNode."""
    return {"site-config": str(site), **extra}


def written(site: Path) -> set[Path]:
    state = load_site_config(site).state_dir
    return {p.relative_to(state) for p in state.rglob("*")} if state.exists() else set()


def assert_refused(reply: Message, *words: str) -> None:
    assert reply.has_error() and reply.error.code == REFUSED_CODE, reply
    assert reply.error.reason.startswith("site hospital_x refuses this run and trains nothing")
    for w in words:
        assert w in reply.error.reason, reply.error.reason


@pytest.mark.parametrize("key", sorted(AT_AND_PAST_LIMIT))
def test_a_bounded_key_past_the_site_limit_is_refused_and_nothing_trains(site, round_one, key):
    before = written(site)
    reply = ask(round_one, {key: AT_AND_PAST_LIMIT[key][1]}, deployed(site))
    assert_refused(reply, f"run config {key}", RUN_CONFIG_RULES[key].limit, str(site))
    assert written(site) == before  # no tensors cached, no optimizer state, no ledger: nothing ran


def test_a_training_message_past_the_step_limit_is_refused(site, round_one):
    assert_refused(ask(with_config(round_one, **{"local-steps": 50}), {}, deployed(site)),
                   "the training message's local-steps = 50 exceeds limits.max_local_steps = 3")


def test_the_statistics_round_is_refused_too(site):
    query = RecordDict({"config": ConfigRecord({"what": "statistics"})})
    assert_refused(ask(query, {"inject-faults": "hospital_x:nan"}, deployed(site), "query.statistics"),
                   ALLOW_TEST_FAULTS)
    assert not ask(query, {}, deployed(site), "query.statistics").has_error()


def test_at_every_limit_the_site_trains(site, round_one):
    reply = ask(round_one, {key: at for key, (at, _) in AT_AND_PAST_LIMIT.items()}, deployed(site))
    assert not reply.has_error(), reply.error
    assert set(reply.content["arrays"]) == set(round_one["arrays"])


def test_a_deployed_node_trains_under_every_safe_key(site, round_one):
    """Every safe key at a non-default value at once (fraction-train < 1 cannot go with dp-central):
    the site trains, ignores the server-only keys and the simulation's site-configs, and the
    coordinator's DP request only adds privacy."""
    # (concept-catalog is left out: another catalog than the one round_one's discretization was made under
    # is refused at the site, by design: test_catalog_flower.py)
    run_config = {k: v for k, v in SAFE_VALUES.items() if k not in ("fraction-train", "concept-catalog")}
    # its own run: a site pins a run's DP settings at its first round (client.privacy)
    reply = ask(with_config(round_one, **{"run-id": "safe-keys"}), run_config, deployed(site))
    assert not reply.has_error(), reply.error
    assert set(reply.content["arrays"]) == set(round_one["arrays"])
    metrics = reply.content["metrics"]
    assert metrics["dp-epsilon"] > 0 and metrics[UNIFORM_WEIGHT] == 1


def test_a_deployed_node_refuses_inject_faults_and_an_opted_in_one_acts_on_it(site, round_one):
    hook = {"inject-faults": "hospital_x:raise@1"}
    before = written(site)
    assert_refused(ask(round_one, hook, deployed(site)), "inject-faults", f"{ALLOW_TEST_FAULTS}=true")
    assert written(site) == before
    with pytest.raises(RuntimeError, match="injected fault at site hospital_x in round 1"):
        ask(round_one, hook, deployed(site, **{ALLOW_TEST_FAULTS: True}))


def test_a_simulated_node_takes_the_opt_in_from_its_simulation(site, round_one, monkeypatch, one_thread):
    simulated = {"partition-id": 0, "num-partitions": 1}  # all the node config Flower's simulation gives
    hook = {"inject-faults": "hospital_x:raise@1", "site-configs": str(site)}
    monkeypatch.setenv(SIMULATION_OPT_IN_ENV, "0")
    assert_refused(ask(round_one, hook, simulated), ALLOW_TEST_FAULTS)
    monkeypatch.setenv(SIMULATION_OPT_IN_ENV, "1")
    with pytest.raises(RuntimeError, match="injected fault"):
        ask(round_one, hook, simulated)
