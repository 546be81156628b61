"""What leaves a site, value by value (the key allowlist is test_reply_allowlist.py).

The real ClientApp answers real Messages built by the real server code, at a hospital whose min-patients
(5) exceeds the DP batch (2):

* a DP round reports only the server's schedule echoed back, the expected (not the drawn) example count
  and the ledger's values, each equal to what an independent computation from the configuration gives;
  two runs (different Poisson draws) report the same values, so nothing depends on the draws;
* a statistics reply's counts agree with each other and are all zero at a hospital above its size;
* a site whose budget is spent sends no arrays and only its ledger.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from opacus.accountants.utils import get_noise_multiplier
from test_reply_allowlist import (
    NODE,
    STATISTICS_RECORDS,
    TRAIN_RECORDS,
    _check_metrics,
    _check_records,
    _message,
)
from test_reply_allowlist import site as site  # noqa: F401  (the module's synthetic hospital fixture)

from client.client_app import app
from clin_jepa.config import load_site_config
from clin_jepa.data.stats import SiteStatistics, quantile_edges
from clin_jepa.data.tasks import load_tasks
from clin_jepa.data.tokenize import build_site_tensors
from clin_jepa.federation import FederationConfig, plan_round
from server.state import ServerState
from server.strategy import ClinJepaFedAvg

pytestmark = pytest.mark.filterwarnings("ignore:.*[Ff]ull backward hook.*", "ignore:.*Secure RNG.*",
                                        "ignore:Optimal order is the largest alpha")
BATCH, STEPS, ROUNDS, MIN_PATIENTS, EPSILON = 2, 2, 3, 5, 5.0
# the server's schedule echoed back; the expected example count; the ledger
DP_METRICS = {"num-examples", "train-rows", "lr", "momentum", "phase_index"}


def _context(site, run_config, min_patients=MIN_PATIENTS) -> Context:
    node = {"site-config": str(site), "min-patients": min_patients}
    return Context(run_id=1, node_id=NODE, node_config=node, state=RecordDict(), run_config=run_config)


def _statistics(site, run_config, min_patients=MIN_PATIENTS):
    query = RecordDict({"config": ConfigRecord({"what": "statistics"})})
    return app(_message(query, "query.statistics", 0), _context(site, run_config, min_patients))


def _train_patients(site, disc) -> int:
    """Distinct subjects among the site's training rows (tokenized afresh, no cache): the DP population.
    Fewer than the split file's train subjects: a subject without a usable ICU stay has no row."""
    tensors = build_site_tensors(load_site_config(site), disc, load_tasks(), 48, use_cache=False)
    train = tensors.subset("train")
    return int(len(np.unique(train.subject_id)))


@pytest.mark.timeout(300)
def test_dp_round_values_statistics_values_and_the_exhausted_reply(site):
    run_config = {"num-rounds": ROUNDS, "local-steps": STEPS, "preset": "tiny", "synth-if-missing": False,
                  "site-configs": str(site), "min-sites": 1, "hours": 48, "batch-size": BATCH,
                  "dp-sample-epsilon": EPSILON}
    cfg = FederationConfig.from_run_config(run_config)
    stats_reply = _statistics(site, run_config)
    _check_records(stats_reply, STATISTICS_RECORDS, "statistics reply")
    arrays = {k: v.numpy() for k, v in stats_reply.content["statistics"].items()}
    assert stats_reply.content["metrics"]["num-examples"] == int(arrays["n_stays"][0])
    assert int(arrays["n_subjects"][0]) >= MIN_PATIENTS and (arrays["hist"] >= 0).all()
    # a cell or count behind >= 5 patients holds >= 5 events: no value below the threshold leaves
    for key in ("hist", "counts"):
        assert arrays[key].any() and (arrays[key][arrays[key] > 0] >= MIN_PATIENTS).all(), key
    tiny = _statistics(site, run_config, min_patients=10**6)  # a hospital smaller than its threshold
    zero = {k: v.numpy() for k, v in tiny.content["statistics"].items()}
    assert all(not v.any() for v in zero.values()), {k: int(v.sum()) for k, v in zero.items()}
    assert tiny.content["metrics"]["num-examples"] == 0

    state = ServerState.initial(cfg, quantile_edges(SiteStatistics.from_arrays(arrays), cfg.n_bins))
    strategy = ClinJepaFedAvg(cfg, state, {NODE: "hospital_a"})
    plan = plan_round(1, cfg)
    sent = state.flat(plan.upload)

    def train(run_id: str, run_cfg: dict) -> dict:
        config = strategy.round_config(1)
        config["run-id"] = run_id
        arrays = ArrayRecord({k: Array(v) for k, v in sent.items()})
        content = RecordDict({"arrays": arrays, "config": config})
        return app(_message(content, "train", 1), _context(site, run_cfg))

    replies = [train(run_id, run_config) for run_id in ("values-a", "values-b")]
    metrics = []
    for reply in replies:
        _check_records(reply, TRAIN_RECORDS, "DP reply")
        _check_metrics(reply.content["metrics"], DP_METRICS | {k for k in reply.content["metrics"]
                                                             if k.startswith("dp-")}, "DP reply")
        back = {k: v.numpy() for k, v in reply.content["arrays"].items()}
        assert set(back) == set(sent) and all(np.isfinite(v).all() for v in back.values())
        metrics.append(dict(reply.content["metrics"]))
    m = metrics[0]
    rate = BATCH / _train_patients(site, state.disc)  # patients, not stays: the DP unit
    noise = get_noise_multiplier(target_epsilon=EPSILON, target_delta=1e-5, sample_rate=rate,
                                 steps=ROUNDS * STEPS, accountant="rdp")
    assert m["num-examples"] == STEPS * BATCH  # expected, not the Poisson draws
    assert m["lr"] == pytest.approx(plan.lrs[-1]) and 0 <= m["momentum"] <= 1  # the schedule's values
    assert m["phase_index"] == plan.phase_index and m["train-rows"] >= MIN_PATIENTS
    assert m["dp-sample-rate"] == pytest.approx(rate, rel=1e-12)
    assert m["dp-noise-multiplier"] == pytest.approx(noise, rel=1e-9)
    assert (m["dp-steps"], m["dp-planned-steps"], m["dp-budget-exhausted"]) == (STEPS, ROUNDS * STEPS, 0)
    assert m["dp-target-epsilon"] == EPSILON and m["dp-delta"] == 1e-5 and 0 < m["dp-epsilon"] < EPSILON
    assert not any(k.startswith(("loss", "monitor-", "collapse")) or k == "client-time-s" for k in m)
    # other Poisson draws, same values: nothing in the reply depends on which patients were drawn (only
    # the all-runs composition grows with the second run)
    same = {k: v for k, v in metrics[1].items() if k != "dp-epsilon-all-runs"}
    assert same == {k: v for k, v in m.items() if k != "dp-epsilon-all-runs"}
    assert metrics[1]["dp-epsilon-all-runs"] > m["dp-epsilon-all-runs"] > 0

    # a budget too small for even one round: no arrays, only the ledger leaves
    spent = train("values-c", {**run_config, "dp-sample-epsilon": 0.05, "dp-sample-noise-multiplier": 0.3})
    assert not spent.has_error() and not spent.content.array_records
    ledger = dict(spent.content["metrics"])
    assert set(ledger) <= {k for k in ledger if k.startswith("dp-")}, ledger
    assert ledger["dp-budget-exhausted"] == 1 and ledger["dp-steps"] == 0 and ledger["dp-epsilon"] == 0
    reason = str(spent.content["status"]["reason"])
    assert "0.05" in reason  # the budget it refused against, nothing about the data
