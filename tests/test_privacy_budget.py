"""The budget belongs to the site, not to the run: attacks by a curious coordinator on the site's ledger.

* a new run id buys no new budget: the site's lifetime ε (its config) bounds the composition of all runs;
* the round's spend is on disk before its first step, and stays spent when the round fails;
* run ids that could name files outside the state directory are refused before anything is written;
* a run resumed with other DP settings or another min-patients is refused, at the site and at the server;
* a round trained without DP carries no ε from an earlier round into the metrics line.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.metadata import Metadata
from test_privacy import BATCH, CUR, SETTINGS, WARMUP, K, _model, _round, _tensors

from clin_jepa.cli import main as cli
from clin_jepa.config import PrivacyConfig
from clin_jepa.curriculum import FixedSchedule
from clin_jepa.data.stats import SiteStatistics, quantile_edges
from clin_jepa.errors import ConfigError
from clin_jepa.federation import FederationConfig, plan_round
from clin_jepa.privacy import (
    BudgetExhausted,
    PrivacyLedger,
    RunDPOverrides,
    check_run_id,
    ledger_path,
    private_train_steps,
    resolve_dp_settings,
    run_path,
)
from clin_jepa.train import build_optimizer

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*[Ff]ull backward hook.*", "ignore:.*Secure RNG.*",
                                         "ignore:Optimal order is the largest alpha")]
HOSTILE_RUN_IDS = ["../../x", "..", "a/../../b", "/etc/passwd", "/tmp/x", "a/b", "a\\b", ".hidden", "",
                   "a\x00b", "a\nb", "x\x1b[2J", "a..b", "é", "x" * 200, 7, None]


def test_a_new_run_id_buys_no_new_budget(tmp_path):
    eps = [_round(tmp_path, rnd)[0]["dp-epsilon"] for rnd in (1, 2, 3)]  # the whole plan of run1: ε≈3
    assert 3.0 - 0.05 < eps[-1] <= 3.0
    for run_id in ("run2", "run3"):  # every new flwr run arrives with a fresh id
        with pytest.raises(BudgetExhausted, match="lifetime budget 3 .* over all runs") as info:
            _round(tmp_path, 1, run_id=run_id)
        assert info.value.metrics["dp-epsilon-all-runs"] == pytest.approx(eps[-1])
        assert info.value.metrics["dp-budget-exhausted"] == 1
    steps = {p.stem: sum(r["steps"] for r in json.loads(p.read_text())["rounds"])
             for p in (tmp_path / "privacy").glob("*.json")}
    assert steps == {"run1": 3 * K, "run2": 0, "run3": 0}


def test_lifetime_budget_is_the_sites_config_even_when_only_the_run_config_asks_for_dp(tmp_path):
    site = PrivacyConfig(enabled=False, target_epsilon=1.0, delta=1e-6)
    settings = resolve_dp_settings(site, RunDPOverrides(epsilon=8.0, delta=1e-5, noise_multiplier=5.0))
    assert settings.lifetime() == (1.0, 1e-6) and settings.target_epsilon == 8.0
    spent = []
    with pytest.raises(BudgetExhausted, match="lifetime") as info:
        for rnd in range(1, 50):  # the run allows ε = 8; the site allows 1 over its lifetime
            spent.append(_round(tmp_path, rnd, settings=settings)[0])
    assert len(spent) >= 2 and spent[-1]["dp-epsilon-all-runs"] <= 1.0
    assert spent[-1]["dp-epsilon"] < 8.0 / 2  # stopped far below what the run config would have allowed
    assert info.value.metrics["dp-lifetime-epsilon"] == 1.0


def test_spend_is_on_disk_before_the_first_step_and_stays_spent_after_a_failure(tmp_path):
    tensors = _tensors(40)
    ledger = PrivacyLedger.open(tmp_path, site="a", run_id="run1", settings=SETTINGS, rate=BATCH / 40,
                                planned_steps=3 * K)
    on_disk_at_first_batch = []

    def batches():
        on_disk_at_first_batch.append(PrivacyLedger.load(ledger_path(tmp_path, "run1")).steps)
        yield from _round_batches(tensors)
        raise RuntimeError("the site crashes after one step")

    model = _model()
    with pytest.raises(RuntimeError, match="crashes"):
        private_train_steps(model, build_optimizer(model, CUR), tensors, FixedSchedule(WARMUP, lr=1e-3), 0, K,
                            ledger=ledger, settings=SETTINGS, expected_batch_size=BATCH, rnd=1,
                            batches=batches())
    assert on_disk_at_first_batch == [K]  # the whole round was spent before any noise was drawn
    assert PrivacyLedger.load(ledger_path(tmp_path, "run1")).steps == K  # and a failure does not refund it


def _round_batches(tensors):
    from clin_jepa.data.dataset import batch_from_indices

    yield batch_from_indices(tensors, np.arange(BATCH))


@pytest.mark.parametrize("run_id", HOSTILE_RUN_IDS, ids=repr)
def test_hostile_run_ids_are_refused_before_anything_is_written(tmp_path, run_id):
    state = tmp_path / "state"
    state.mkdir()
    with pytest.raises(ConfigError, match="run id"):
        check_run_id(run_id)
    with pytest.raises(ConfigError, match="run id"):
        PrivacyLedger.open(state, site="a", run_id=run_id, settings=SETTINGS, rate=0.2, planned_steps=3)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["state"]


def test_a_symlink_planted_in_the_state_dir_does_not_lead_outside(tmp_path):
    (tmp_path / "state" / "federated").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state" / "federated" / "run1").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="outside the site's state directory"):
        run_path(tmp_path / "state", "federated", "run1", "optimizer.pt")
    inside = run_path(tmp_path / "state", "federated", "run2", "x")
    assert inside == tmp_path / "state" / "federated" / "run2" / "x"


# --- the real ClientApp answering real Messages ------------------------------------------------------------

NODE = 3


@pytest.fixture(scope="module")
def one_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    assert cli(["synth", "--out", str(root), "--sites", "1", "--patients", "40", "--seed", "5"]) == 0
    return root / "hospital_a.yaml"


def _ask(app, content: RecordDict, message_type: str, context: Context, rnd: int) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{rnd}", src_node_id=0, dst_node_id=NODE, reply_to_message_id="",
                    group_id=str(rnd), created_at=time.time(), ttl=3600.0, message_type=message_type)
    return app(Message(content, metadata=meta), context)


def _context(site, run_config, **node) -> Context:
    return Context(run_id=1, node_id=NODE, node_config={"site-config": str(site), **node}, state=RecordDict(),
                   run_config=run_config)


@pytest.mark.timeout(300)
def test_client_refuses_hostile_run_ids_and_changed_privacy_settings(one_site, tmp_path):
    from client.client_app import app
    from server.state import ServerState
    from server.strategy import ClinJepaFedAvg

    run_config = {"num-rounds": 3, "local-steps": 1, "preset": "tiny", "synth-if-missing": False,
                  "site-configs": str(one_site), "min-sites": 1, "hours": 48, "batch-size": 4,
                  "dp-sample-epsilon": 5.0}
    cfg = FederationConfig.from_run_config(run_config)
    stats = _ask(app, RecordDict({"config": ConfigRecord({"what": "statistics"})}), "query.statistics",
                 _context(one_site, run_config), 0)
    arrays = {k: v.numpy() for k, v in stats.content["statistics"].items()}
    state = ServerState.initial(cfg, quantile_edges(SiteStatistics.from_arrays(arrays), cfg.n_bins))
    strategy = ClinJepaFedAvg(cfg, state, {NODE: "hospital_a"})
    state_dir = one_site.parent / "state" / "hospital_a"
    before = {p for p in tmp_path.parent.rglob("*")}

    def train(rnd: int, context: Context, **config) -> Message:
        plan = plan_round(rnd, cfg)
        record = ConfigRecord({**dict(strategy.round_config(rnd)), **config})
        arrays = ArrayRecord({k: Array(v) for k, v in state.flat(plan.upload).items()})
        content = RecordDict({"arrays": arrays, "config": record})
        return _ask(app, content, "train", context, rnd)

    for bad in ("../../x", "/tmp/clin-jepa-evil", "a/../../../b", "..", "x\ny"):
        with pytest.raises(ConfigError, match="run id"):
            train(1, _context(one_site, run_config), **{"run-id": bad})
    assert {p for p in tmp_path.parent.rglob("*")} == before  # nothing written anywhere, inside or out
    assert not (state_dir / "federated").exists() and not (state_dir / "privacy").exists()

    reply = train(1, _context(one_site, run_config, **{"min-patients": 5}))
    assert not reply.has_error() and reply.content["metrics"]["dp-epsilon"] > 0
    assert "client-time-s" not in reply.content["metrics"]  # its duration would reveal the Poisson batches
    with pytest.raises(ConfigError, match="min-patients changed"):
        train(2, _context(one_site, run_config, **{"min-patients": 4}))
    looser = {**run_config, "dp-sample-epsilon": 50.0}
    with pytest.raises(ConfigError, match="dp changed"):
        train(2, _context(one_site, looser, **{"min-patients": 5}))
    steps_before = reply.content["metrics"]["dp-steps"]
    again = train(2, _context(one_site, run_config, **{"min-patients": 5}))  # unchanged settings: goes on
    assert again.content["metrics"]["dp-steps"] == steps_before + 1


def test_server_refuses_resume_with_changed_dp_settings(tmp_path):
    from server.state import ServerState, resume_state, save_round

    stats = SiteStatistics.from_arrays({**SiteStatistics.empty().to_arrays(), "n_subjects": np.array([5]),
                                        "n_stays": np.array([5])})
    stats.hist[:16] = 1  # every cell of the 16 original measurements (the catalog's others stay empty)
    cfg = FederationConfig(num_rounds=2, local_steps=1, preset="tiny", hours=24, dp_sample_epsilon=2.0)
    state = ServerState.initial(cfg, quantile_edges(stats, cfg.n_bins))
    state.round = 1
    save_round(state, tmp_path, 1, "warmup", {"round": 1}, ["a"])
    assert resume_state(cfg, tmp_path).round == 1
    for change in ({"dp_sample_epsilon": 20.0}, {"dp_sample_epsilon": 0.0}, {"dp_central": "server-fixed"},
                   {"dp_noise_multiplier": 0.1}, {"dp_sample_max_grad_norm": 5.0}):
        with pytest.raises(ConfigError, match=next(iter(change)).replace("_", "-")):
            resume_state(dataclasses.replace(cfg, **change), tmp_path)


def test_a_round_without_dp_carries_no_epsilon_from_an_earlier_round():
    from server.privacy import record_privacy

    accountants: dict = {}
    first = {"round": 1, "sites": {"a": {"dp-epsilon": 0.7, "dp-delta": 1e-5}, "b": {"loss": 1.0}}}
    record_privacy(object(), first, accountants)
    assert first["privacy"]["sample_level"] == {"a": 0.7}
    second = {"round": 2, "sites": {"a": {"loss": 0.9}, "b": {"loss": 0.8}}}  # a trained without DP
    record_privacy(object(), second, accountants)
    assert "privacy" not in second
    # the checkpoint keeps the site's last ε (a resumed run continues from it); the line does not show it
    assert accountants["sample_level"]["a"] == {"epsilon": 0.7, "delta": 1e-5, "round": 1}
