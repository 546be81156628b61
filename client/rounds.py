"""The ClientApp's handlers (registered in ``client.client_app``): Messages to calls on the site's cached
state (``client.site``) and back. This module carries the heavy imports (torch, the site's data and
training code); a worker process imports it once, on its first message.

Three handlers:

* ``query.statistics`` — the statistics round: this site's mergeable value histograms and code counts
  (arrays only, never rows) and the site's name; with ``what="identify"`` only the name (a resumed server
  maps nodes to sites without recomputing statistics);
* ``train`` — one round of local training on the groups the server sent; the reply is one ArrayRecord with
  exactly the trained groups (their update in float16 by default, ``transport-dtype``) and one
  MetricRecord with ``num-examples`` and the losses and monitors. Under client-side fixed clipping
  (``dp-central = client-fixed``: the server's Flower DP wrapper puts the clipping norm into the message)
  the round's update is clipped here, in float32, before it is cast for transport, and the bound holds for
  what the server decodes (``clin_jepa.federation.encode_reply``);
* ``evaluate`` — the global model measured on this site's stays (probes, drift, displacement); the reply
  is one MetricRecord of small-cell-safe aggregates.

A raised exception becomes a Flower error reply; the server logs it and goes on with the other sites.
Only its type leaves the site, except for configuration errors and privacy refusals (``client.errors``).
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.errors import InjectedFault
from client.privacy import (
    budget_exhausted_reply,
    central_dp_metrics,
    client_clipping_norm,
    pin_privacy_settings,
    site_dp,
)
from client.site import ServerSchedule, Site, get_site, site_config_path
from clin_jepa.curriculum import Phase, rollout_steps_in
from clin_jepa.data.concepts import check_site_catalog, load_concepts, use_catalog
from clin_jepa.data.stats import Discretization
from clin_jepa.federation import FederationConfig, encode_reply, split_groups, unpack_arrays
from clin_jepa.models import ModelConfig
from clin_jepa.privacy import BudgetExhausted, check_run_id
from clin_jepa.privacy.statistics import released_statistics
from clin_jepa.security.disclosure import min_patients_from, round_patients, suppress_by_metric


def _site(context: Context) -> tuple[Site, FederationConfig]:
    fed = FederationConfig.from_run_config(context.run_config)
    use_catalog(fed.catalog_path())  # the federation's vocabulary; a site config naming another refuses
    if "partition-id" in context.node_config:
        # Simulated sites share the machine's cores: one thread each keeps parallel workers from thrashing.
        torch.set_num_threads(1)
    return get_site(site_config_path(dict(context.node_config), fed)), fed


def statistics(msg: Message, context: Context) -> Message:
    site, _ = _site(context)
    what = msg.content["config"].get("what", "statistics")
    info = ConfigRecord({"site": site.name})
    if what == "identify":
        return Message(RecordDict({"site": info}), reply_to=msg)
    check_site_catalog(site.name, site.cfg.concept_catalog)  # an error reply: the server leaves it out
    info["catalog"] = load_concepts().fingerprint()
    min_patients = min_patients_from(context.node_config)
    metrics: dict[str, float] = {}
    if site.cfg.privacy.statistics_epsilon is not None:
        # Gaussian noise on bounded per-patient contributions, spent in the site's ledger before it leaves
        stats, metrics = released_statistics(site.cfg, site.statistics(), min_patients)
    else:  # cells and concept counts behind fewer than min-patients patients stay at the site
        stats = site.statistics().suppressed(min_patients)
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in stats.to_arrays().items()})
    metrics["num-examples"] = stats.n_stays
    return Message(RecordDict({"statistics": arrays, "metrics": MetricRecord(metrics), "site": info}),
                   reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    site, fed = _site(context)
    config = msg.content["config"]
    rnd = int(config["server-round"])
    trains = tuple(str(config["trains"]).split(","))
    sent = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    groups = split_groups({**sent, **unpack_arrays(bytes(config["frozen-groups"]))})
    if config.get("target-is-encoder", False):
        groups["target_encoder"] = groups["encoder"]
    phase = Phase(str(config["phase"]), int(config["phase-index"]), "encoder" in trains,
                  "predictor" in trains, 1.0, 0, 0)
    step0, n_steps = int(config["global-step"]), int(config["local-steps"])
    schedule = ServerSchedule(phase, tuple(float(x) for x in config["lr-steps"]), step0,
                              rollout_steps_in(phase.name, fed.curriculum))
    disc = Discretization.from_dict(json.loads(str(config["discretization"])))
    model_cfg = ModelConfig.from_dict(json.loads(str(config["model-config"])))
    run_id = check_run_id(config.get("run-id"))  # names files in the site's state_dir
    min_patients = min_patients_from(context.node_config)
    pin_privacy_settings(site.cfg, fed, run_id, min_patients)
    clip_norm = client_clipping_norm(config, fed)  # before training: never train for a reply we cannot clip
    _inject_fault(fed, site.name, rnd, "before")
    try:
        trained, metrics = site.train_round(model_cfg, disc, groups, schedule, n_steps, fed, run_id, rnd)
    except BudgetExhausted as exc:
        return budget_exhausted_reply(msg, exc)
    metrics.update(central_dp_metrics(fed))
    reply = {f"{g}.{k}": v for g, state in trained.items() for k, v in state.items()}
    if set(reply) != set(sent):
        raise RuntimeError(f"site {site.name}: trained keys differ from the keys the server sent")
    reply = _inject_fault(fed, site.name, rnd, "after", reply, sent, metrics) or reply
    reply = encode_reply(reply, sent, fed.transport_dtype, clip_norm=clip_norm)
    if site_dp(site.cfg, fed) is None:  # under DP the round's duration would reveal the Poisson batch sizes
        metrics["client-time-s"] = time.perf_counter() - t0
    # No aggregate over fewer than the hospital's min-patients leaves the site (node config).
    subjects = site.train_tensors(disc, fed.hours).subject_id
    behind = round_patients(subjects, fed.batch_size or site.cfg.batch_size, fed.seed, step0, n_steps)
    metrics = suppress_by_metric(metrics, len(np.unique(subjects)), *behind, min_patients)
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(reply[k])) for k in sent})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """The global model measured on this site's own stays, as ``clin-jepa evaluate`` measures it; the
    reply is one MetricRecord of small-cell-safe aggregates (``clin_jepa.evaluation.federated``)."""
    site, fed = _site(context)
    config = msg.content["config"]
    groups = split_groups({k: v.numpy() for k, v in msg.content["arrays"].items()})
    disc = Discretization.from_dict(json.loads(str(config["discretization"])))
    model_cfg = ModelConfig.from_dict(json.loads(str(config["model-config"])))
    metrics = site.evaluate(model_cfg, disc, groups, fed, min_patients_from(context.node_config))
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _inject_fault(fed: FederationConfig, site: str, rnd: int, when: str,
                  reply: dict[str, np.ndarray] | None = None, sent: dict[str, np.ndarray] | None = None,
                  metrics: dict[str, float] | None = None) -> dict[str, np.ndarray] | None:
    """Test hook (run config ``inject-faults``): make this site misbehave in a round. Reached only at a
    node whose node config opts in (``allow-test-faults``); ``client.policy`` refuses the run elsewhere."""
    kinds = set(fed.fault_for(site, rnd).split("+"))
    if when == "after" and metrics is not None and "claim" in kinds:
        metrics["num-examples"] = 1e12
    if when == "before" and "raise" in kinds:
        raise InjectedFault(f"injected fault at site {site} in round {rnd}")
    if when == "before" and "sleep" in kinds:
        time.sleep(fed.round_timeout + 5)
    if when == "after" and reply is not None and "nan" in kinds:
        first = sorted(reply)[0]
        return {**reply, first: np.full_like(reply[first], np.nan)}
    if when == "after" and reply is not None and "scale" in kinds:
        return {k: v * np.float32(1e4) for k, v in reply.items()}
    if when == "after" and reply is not None and sent is not None and kinds & {"flip", "still"}:
        factor = np.float32(-9.9 if "flip" in kinds else 0.0)  # -9.9: just under max-norm-ratio's default 10
        return {k: (sent[k] + factor * (v - sent[k])).astype(v.dtype) for k, v in reply.items()}
    return None
