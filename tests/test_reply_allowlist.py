"""Only model arrays and aggregate metrics leave a site: every ClientApp reply is checked key by key.

The real ClientApp answers real Flower Messages built by the real server code (statistics query, then
one training round per curriculum phase, and evaluate messages under three small-cell thresholds). Any
record, array key or metric outside the allowlists below fails the test: adding something to a reply
means adding it here, in review.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time

import numpy as np
import pytest
from deploy_harness import BIN
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from client.client_app import app
from client.site import get_site
from clin_jepa.curriculum import PHASES
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.stats import SiteStatistics, quantile_edges
from clin_jepa.data.tasks import load_tasks
from clin_jepa.errors import ConfigError
from clin_jepa.federation import FederationConfig, decode_reply, plan_round, update_norm
from clin_jepa.models import GROUPS
from server.state import ServerState
from server.strategy import ClinJepaFedAvg

NODE = 7
STATISTICS_RECORDS = {"statistics": ArrayRecord, "metrics": MetricRecord, "site": ConfigRecord}
STATISTICS_ARRAYS = {"hist", "counts", "n_subjects", "n_stays"}  # histograms over fixed grids and counts
TRAIN_RECORDS = {"arrays": ArrayRecord, "metrics": MetricRecord}
# Aggregates over the site's whole local training run (means over steps and batches), never per patient.
TRAIN_METRICS = {
    "num-examples", "train-rows", "client-time-s", "loss", "collapse", "lr", "momentum", "phase_index",
    "loss_ahead", "loss_obs",  # batch means of the look-ahead and observation-forecast terms
    "monitor-drift", "monitor-eff_rank", "monitor-emb_std_mean", "monitor-emb_std_min",
    "monitor-hour_share",  # between-hour R² of the last batch's latents (a scalar, like the other monitors)
}
TRAIN_METRIC_PATTERNS = (re.compile(r"loss_step\d+"),)  # one rollout-loss mean per predicted step


def _message(content: RecordDict, message_type: str, rnd: int) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{rnd}", src_node_id=0, dst_node_id=NODE, reply_to_message_id="",
                    group_id=str(rnd), created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(content, metadata=meta)


def _check_metrics(record: MetricRecord, allowed: set[str], where: str,
                   patterns: tuple[re.Pattern, ...] = ()) -> None:
    extra = {k for k in record if k not in allowed and not any(p.fullmatch(k) for p in patterns)}
    assert not extra, f"{where}: metric(s) outside the allowlist: {sorted(extra)}"
    for key, value in record.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), f"{where}: {key} is {value!r}"
        assert math.isfinite(value), f"{where}: {key} = {value}"


def _check_records(reply: Message, allowed: dict[str, type], where: str) -> None:
    assert not reply.has_error(), f"{where}: {reply.error}"
    content = reply.content
    outside = set(content) - set(allowed)
    assert not outside, f"{where}: records outside the allowlist: {outside}"
    for name, record in content.items():
        assert isinstance(record, allowed[name]), f"{where}: {name} is a {type(record).__name__}"


def _synth(root, patients: int):
    done = subprocess.run([str(BIN / "clin-jepa"), "synth", "--out", str(root), "--sites", "1", "--patients",
                           str(patients), "--seed", "5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return root / "hospital_a.yaml"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return _synth(tmp_path_factory.mktemp("allowlist"), 40)


@pytest.fixture(scope="module")
def larger_site(tmp_path_factory):
    """Enough held-out patients that the tasks' cells differ in size."""
    return _synth(tmp_path_factory.mktemp("allowlist_eval"), 200)


@pytest.mark.timeout(300)
def test_every_reply_carries_only_allowlisted_arrays_and_metrics(site):
    run_config = {"num-rounds": len(PHASES), "local-steps": 1, "preset": "tiny", "synth-if-missing": False,
                  "phase-fractions": "0.2,0.2,0.2,0.2,0.2", "site-configs": str(site), "min-sites": 1}
    cfg = FederationConfig.from_run_config(run_config)
    context = Context(run_id=1, node_id=NODE, node_config={"site-config": str(site)}, state=RecordDict(),
                      run_config=run_config)

    query = RecordDict({"config": ConfigRecord({"what": "statistics"})})
    reply = app(_message(query, "query.statistics", 0), context)
    _check_records(reply, STATISTICS_RECORDS, "statistics reply")
    arrays = {k: v.numpy() for k, v in reply.content["statistics"].items()}
    assert set(arrays) == STATISTICS_ARRAYS
    assert arrays["hist"].dtype.kind in "iu" and arrays["counts"].dtype.kind in "iu"  # counts, not values
    _check_metrics(reply.content["metrics"], {"num-examples"}, "statistics reply")
    # the site's name and the fingerprint of the (public) concept catalog it tokenizes with, nothing else
    assert dict(reply.content["site"]) == {"site": "hospital_a", "catalog": load_concepts().fingerprint()}

    stats = SiteStatistics.from_arrays(arrays)
    state = ServerState.initial(cfg, quantile_edges(stats, cfg.n_bins))
    strategy = ClinJepaFedAvg(cfg, state, {NODE: "hospital_a"})
    seen_phases = []
    for rnd in range(1, cfg.num_rounds + 1):
        plan = plan_round(rnd, cfg)
        state.begin_round(plan)
        sent = state.flat(plan.upload)
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in sent.items()}),
                              "config": strategy.round_config(rnd)})
        reply = app(_message(content, "train", rnd), context)
        where = f"round {rnd} ({plan.phase}) reply"
        _check_records(reply, TRAIN_RECORDS, where)
        wire = {k: v.numpy() for k, v in reply.content["arrays"].items()}
        assert set(wire) == set(sent), f"{where}: array keys differ from the groups the server sent"
        # the default transport: the round's update in float16, which the server adds to what it sent
        assert cfg.transport_dtype == "float16" and all(v.dtype == np.float16 for v in wire.values())
        back = decode_reply(wire, sent, cfg.transport_dtype)
        for key, value in back.items():
            assert value.shape == sent[key].shape and value.dtype == sent[key].dtype, f"{where}: {key}"
            assert np.isfinite(value).all(), f"{where}: {key} has NaN/inf"
        _check_metrics(reply.content["metrics"], TRAIN_METRICS, where, TRAIN_METRIC_PATTERNS)
        assert reply.content["metrics"]["num-examples"] >= 1
        state.end_round(plan, back)
        seen_phases.append(plan.phase)
    assert seen_phases == list(PHASES)

    # The same round at a hospital whose threshold exceeds its patient count: only the weight leaves.
    strict = Context(run_id=1, node_id=NODE, node_config={"site-config": str(site), "min-patients": 10**6},
                     state=RecordDict(), run_config=run_config)
    plan = plan_round(1, cfg)
    config = strategy.round_config(1)
    config["run-id"] = "strict-run"  # min-patients is pinned per run: a stricter threshold is another run
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.flat(plan.upload).items()}),
                          "config": config})
    reply = app(_message(content, "train", 1), strict)
    _check_records(reply, TRAIN_RECORDS, "suppressed reply")
    assert set(reply.content["metrics"]) == {"num-examples"}


EVALUATE_RECORDS = {"metrics": MetricRecord}
# Aggregates over the site's held-out stays (probe scores, mean drift, cohort mean ratio), never per patient.
EVALUATE_METRICS = {"num-examples", "eval-mean_auroc", "eval-displacement_ratio", "eval-drift_abs_late"}
EVALUATE_PATTERNS = (re.compile(r"eval-(auroc|auprc)-[a-z0-9_]+"),)


def _statistics_state(cfg: FederationConfig, context: Context) -> ServerState:
    """The server's initial state built from the real ClientApp's statistics reply."""
    query = RecordDict({"config": ConfigRecord({"what": "statistics"})})
    reply = app(_message(query, "query.statistics", 0), context)
    stats = SiteStatistics.from_arrays({k: v.numpy() for k, v in reply.content["statistics"].items()})
    return ServerState.initial(cfg, quantile_edges(stats, cfg.n_bins))


def _evaluate_reply(site, min_patients: int):
    """The real ClientApp's answer to the server's evaluate message for an untrained global model."""
    run_config = {"preset": "tiny", "synth-if-missing": False, "site-configs": str(site), "min-sites": 1}
    cfg = FederationConfig.from_run_config(run_config)
    node_config = {"site-config": str(site), "min-patients": min_patients}
    context = Context(run_id=1, node_id=NODE, node_config=node_config, state=RecordDict(),
                      run_config=run_config)
    # the discretization comes from a statistics round without suppression: the model must have inputs
    lenient = Context(run_id=1, node_id=NODE, node_config={"site-config": str(site), "min-patients": 1},
                      state=RecordDict(), run_config=run_config)
    state = _statistics_state(cfg, lenient)
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.flat(GROUPS).items()}),
                          "config": ConfigRecord({"server-round": 1, "run-id": state.run_id,
                                                  "discretization": json.dumps(state.disc.to_dict()),
                                                  "model-config": json.dumps(state.model_cfg.to_dict())})})
    reply = app(_message(content, "evaluate", 1), context)
    _check_records(reply, EVALUATE_RECORDS, f"evaluate reply (min-patients {min_patients})")
    metrics = dict(reply.content["metrics"])
    _check_metrics(reply.content["metrics"], EVALUATE_METRICS, "evaluate reply", EVALUATE_PATTERNS)
    return metrics, state.disc


@pytest.mark.timeout(300)
def test_evaluate_reply_carries_only_small_cell_safe_aggregates(larger_site):
    site = larger_site
    tasks = [t.name for t in load_tasks()]
    everything, disc = _evaluate_reply(site, 1)
    aurocs = {k.removeprefix("eval-auroc-"): v for k, v in everything.items() if k.startswith("eval-auroc-")}
    assert everything["eval-mean_auroc"] == pytest.approx(np.mean(list(aurocs.values())))
    for key, value in everything.items():
        if key.startswith(("eval-auroc-", "eval-auprc-")):
            assert key.split("-", 2)[2] in tasks and 0.0 <= value <= 1.0, (key, value)
    assert everything["num-examples"] >= 1 and everything["eval-drift_abs_late"] > 0
    # A hospital whose threshold no cell reaches sends the weight alone.
    assert set(_evaluate_reply(site, 10**6)[0]) == {"num-examples"}
    # A threshold between the tasks' cell sizes: a task's scores leave only when that many distinct
    # held-out patients are positive and as many negative (counted here from the site's own stays).
    held = get_site(site).eval_tensors(disc, 72).subset("held_out")
    smaller = {t: min(len(np.unique(held.subject_id[held.labels[:, j] == c])) for c in (0, 1))
               for j, t in enumerate(held.tasks) if t in aurocs}
    k = sorted(set(smaller.values()))[-1]
    partial, _ = _evaluate_reply(site, k)
    kept = {key.removeprefix("eval-auroc-") for key in partial if key.startswith("eval-auroc-")}
    assert kept == {t for t, n in smaller.items() if n >= k} and kept < set(aurocs), (smaller, k, kept)
    # per-task scores and the drift are the same numbers; the means cover fewer tasks
    assert all(partial[key] == everything[key] for key in partial
               if key not in ("eval-mean_auroc", "eval-displacement_ratio"))
    assert partial["eval-mean_auroc"] == pytest.approx(np.mean([aurocs[t] for t in kept]))


@pytest.mark.timeout(300)
def test_client_side_clipping_bounds_the_reply_the_server_decodes(site):
    """dp-central = client-fixed with the default float16 transport: the server's DP wrapper puts the
    clipping norm into the message; the site clips in float32 before the cast, and what the server decodes
    is within the norm (the cast itself under attack: test_federation_transport.py)."""
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    clip, dtype = 1e-3, "float16"
    run_config = {"num-rounds": 2, "local-steps": 1, "preset": "tiny", "synth-if-missing": False,
                  "site-configs": str(site), "min-sites": 1, "dp-central": "client-fixed",
                  "dp-clipping-norm": clip, "transport-dtype": dtype}
    cfg = FederationConfig.from_run_config(run_config)
    context = Context(run_id=1, node_id=NODE, node_config={"site-config": str(site)}, state=RecordDict(),
                      run_config=run_config)
    state = _statistics_state(cfg, context)
    strategy = ClinJepaFedAvg(cfg, state, {NODE: "hospital_a"})
    wrapper = DifferentialPrivacyClientSideFixedClipping(strategy, 0.0, clip, 1)
    plan = plan_round(1, cfg)
    state.begin_round(plan)
    sent = state.flat(plan.upload)
    config = ConfigRecord({**dict(strategy.round_config(1)), "run-id": f"clip-{dtype}"})
    config[KEY_CLIPPING_NORM] = wrapper.clipping_norm  # what the wrapper's configure_train adds
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in sent.items()}), "config": config})
    reply = app(_message(content, "train", 1), context)
    _check_records(reply, TRAIN_RECORDS, "clipped reply")
    wire = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    assert all(v.dtype == np.dtype(dtype) for v in wire.values())
    norm = update_norm(decode_reply(wire, sent, dtype), sent)
    assert 0.9 * clip < norm <= clip  # trained past the norm, clipped to it

    del config[KEY_CLIPPING_NORM]  # a client-fixed run whose message lacks the norm: no unclipped reply
    config["run-id"] = f"clip-{dtype}-missing"
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in sent.items()}), "config": config})
    with pytest.raises(ConfigError, match="no clipping norm"):  # Flower turns it into an error reply
        app(_message(content, "train", 1), context)
