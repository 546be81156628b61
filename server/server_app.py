"""Flower ServerApp: the federated curriculum, round by round.

Round 0 (statistics) fixes the shared discretization; rounds ``1..num-rounds`` each follow
``clin_jepa.federation.plan_round``: send the phase's groups, screen the replies, let FedAvg average the
accepted ones, move the target encoder, checkpoint and log; after the rounds run config ``eval-every``
picks, every site evaluates the global model on its own stays (``server.evaluation``). A site that fails,
times out or sends an unusable reply is logged and left out of that round; the round needs ``min-sites``
accepted replies to change the model.
"""

from __future__ import annotations

import time
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.superlink.grid import InMemoryGrid

from clin_jepa.cli import main as clin_jepa_cli
from clin_jepa.config import load_site_config
from clin_jepa.data.concepts import check_catalog, use_catalog
from clin_jepa.errors import ClinJepaError, ConfigError
from clin_jepa.evaluation.federated import evaluates_after
from clin_jepa.evaluation.rounds import read_lines, write_rounds_report
from clin_jepa.federation import FederationConfig, RoundPlan, decode_reply, plan_round
from clin_jepa.tracking import Tracker, federated_metrics, settings
from server.checks import screen_replies
from server.evaluation import log_progress, run_evaluation
from server.privacy import missing_for_central_dp, record_privacy
from server.state import METRICS, ServerState, resume_state, save_round, truncate_metrics
from server.stats_round import query_sites
from server.strategy import PhaseAware, build_strategy, wrap_for_privacy
from server.weights import apply_server_weights

app = ServerApp()
# A simulation's in-memory grid looks for replies every 0.1 s by default: up to 0.1 s idle per round.
SIMULATION_PULL_INTERVAL_S = 0.01
# Longest wait (capped by round-timeout) for a site's node before a run under accounted client-level DP
# stops: such a round cannot go ahead without every site (central_dp_cannot_start).
CENTRAL_DP_WAIT_S = 60.0


@app.main()
def main(grid: Grid, context: Context) -> None:
    if isinstance(grid, InMemoryGrid):
        grid.pull_interval = min(grid.pull_interval, SIMULATION_PULL_INTERVAL_S)
    try:
        cfg = FederationConfig.from_run_config(context.run_config)
        run_federation(grid, cfg)
    except ClinJepaError as exc:
        log(ERROR, "Clin-JEPA federation stopped: %s", exc)
        raise


def ensure_site_data(cfg: FederationConfig) -> None:
    """Generate the synthetic demo hospitals when the configured sites' data is absent (deterministic)."""
    if not cfg.synth_if_missing:
        return
    paths = [cfg.resolve(p) for p in cfg.site_configs]
    data = [load_site_config(p).data_path for p in paths if p.exists()]
    missing = [d for d in data if not d.exists()]
    if not missing:
        return
    out = missing[0].parent
    log(INFO, "Site data missing under %s: generating %d synthetic hospitals", out, len(paths))
    if clin_jepa_cli(["synth", "--out", str(out), "--sites", str(len(paths))]) != 0:
        raise ConfigError(f"could not generate synthetic data in {out}; run `clin-jepa synth --out {out}`")


def run_federation(grid: Grid, cfg: FederationConfig) -> ServerState:
    out_dir = cfg.resolve(cfg.checkpoint_dir)
    log(INFO, "Vocabulary: %s", use_catalog(cfg.catalog_path()).describe())
    ensure_site_data(cfg)
    if cfg.resume_from:
        state = resume_state(cfg, cfg.resolve(cfg.resume_from))
        check_catalog(state.disc.catalog, f"the checkpoint in {cfg.resume_from}")
        roster = query_sites(grid, cfg, "identify")
        truncate_metrics(out_dir, state.round)
        log(INFO, "Resuming after round %d from %s", state.round, cfg.resume_from)
    else:
        t0 = time.perf_counter()
        roster = query_sites(grid, cfg, "statistics")
        state = ServerState.initial(cfg, roster.discretization(cfg.n_bins))
        state.site_patients = {roster.sites[n]: s.n_subjects for n, s in roster.stats.items()}
        truncate_metrics(out_dir, -1)
        line = {"round": 0, "phase": "statistics", "round_time_s": time.perf_counter() - t0,
                "discretization": state.disc.fingerprint(),
                "sites": {roster.sites[n]: {"status": "ok", "n_stays": s.n_stays, "n_subjects": s.n_subjects}
                          for n, s in roster.stats.items()},
                "failed": {str(n): w for n, w in roster.problems.items()}}
        save_round(state, out_dir, 0, "statistics", line, sorted(roster.sites.values()))
    strategy = build_strategy(cfg, state, roster.sites)
    outer = wrap_for_privacy(strategy, cfg)
    first, started = state.round + 1, time.perf_counter()
    tracker = Tracker(cfg.tracking_uri, out_dir, state.run_id, f"federated {state.run_id}",
                      settings(cfg.to_dict()), warn=lambda text: log(WARNING, "%s", text))
    status = "FAILED"
    try:
        for rnd in range(first, cfg.num_rounds + 1):
            if why := central_dp_cannot_start(grid, cfg, strategy, outer):
                log(WARNING, "Stopping before round %d: %s; round %d's checkpoint is kept: bring the node(s) "
                    "back and resume with --run-config 'resume-from=\"%s\"'", rnd, why, rnd - 1, out_dir)
                break
            line = run_round(grid, cfg, state, strategy, outer, plan_round(rnd, cfg), out_dir)
            tracker.log(rnd * cfg.local_steps, federated_metrics(line))
            evaluation = None
            if evaluates_after(rnd, cfg):
                evaluation = run_evaluation(grid, cfg, state, strategy.site_nodes, rnd, out_dir)
                tracker.log(rnd * cfg.local_steps, federated_metrics(evaluation))
            log_progress(cfg, line, evaluation, first, started)
            if cfg.stop_after and rnd >= cfg.stop_after:
                log(WARNING, "Stopping after round %d (stop-after); resume with --run-config "
                    "'resume-from=\"%s\"'", rnd, out_dir)
                break
        status = "FINISHED"
    finally:
        tracker.close(status)
    write_rounds_report(out_dir, read_lines(out_dir / METRICS))
    log(INFO, "Round report: %s (and report.md)", out_dir / "report.html")
    log(INFO, "Final checkpoint: %s", out_dir / "ckpt.pt")
    return state


def central_dp_cannot_start(grid: Grid, cfg: FederationConfig, strategy: PhaseAware,
                            outer: Strategy) -> str | None:
    """Why the next round cannot go ahead under accounted client-level DP (None: it can). Flower's wrapper
    is calibrated to every site and raises when a round is configured for fewer, which would end the
    ServerApp with a traceback; instead the run waits for the missing nodes, then stops after its last
    checkpoint, so a resume continues the schedule where it stopped (no round is spent without them)."""
    wait = min(cfg.round_timeout, CENTRAL_DP_WAIT_S)
    if missing := missing_for_central_dp(outer, strategy.site_nodes, grid, wait):
        return (f"client-level DP is accounted for all {len(strategy.site_nodes)} sites and the node of "
                f"{', '.join(missing)} has not been connected for {wait:.0f} s")
    return None


def _nbytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())


def decode_updates(msg: Message, sent: dict[str, np.ndarray], dtype: str = "float16") -> None:
    """Turn a reduced-precision reply (``transport-dtype``) back into float32 weights in place, before the
    screen, Flower's DP wrappers (clipping and noise in float32) and FedAvg see it; error replies and
    arrays that do not match what was sent stay as they are."""
    if msg.has_error():
        return
    for name, record in list(msg.content.array_records.items()):
        decoded = decode_reply({k: a.numpy() for k, a in record.items()}, sent, dtype)
        msg.content[name] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in decoded.items()})


def run_round(grid: Grid, cfg: FederationConfig, state: ServerState, strategy: PhaseAware,
              outer: Strategy, plan: RoundPlan, out_dir: Path) -> dict[str, Any]:
    """One training round; returns (and logs) its metrics line."""
    t0 = time.perf_counter()
    state.begin_round(plan)
    sent = state.flat(plan.upload)
    arrays = ArrayRecord({k: Array(v) for k, v in sent.items()})
    messages = list(outer.configure_train(plan.round, arrays, ConfigRecord(), grid))
    asked = {m.metadata.dst_node_id for m in messages}
    down = _nbytes(arrays) + strategy.last_frozen_bytes
    t_wait = time.perf_counter()
    # In a fixed site order, not arrival order: float sums depend on their order, and a resumed (or
    # repeated) run must average exactly what an uninterrupted one did, whichever site answers first.
    def site_order(m: Message) -> tuple[str, int]:
        return strategy.site_nodes.get(m.metadata.src_node_id, ""), m.metadata.src_node_id

    replies = sorted(grid.send_and_receive(messages, timeout=cfg.round_timeout), key=site_order)
    wait_s = time.perf_counter() - t_wait
    up_bytes = {m.metadata.src_node_id: sum(_nbytes(r) for r in m.content.array_records.values())
                for m in replies if not m.has_error()}
    up_groups = {m.metadata.src_node_id: sorted({k.split(".", 1)[0] for r in m.content.array_records.values()
                                                 for k in r}) for m in replies if not m.has_error()}
    if cfg.transport_dtype != "float32":
        for msg in replies:
            decode_updates(msg, sent, cfg.transport_dtype)
    # Under client-side clipping every site promised an update within the clipping norm: hold it to that.
    bound = cfg.dp_clipping_norm if cfg.dp_central == "client-fixed" else None
    screened = screen_replies(replies, asked, sent, cfg.max_norm_ratio, max_update_norm=bound)
    sites: dict[str, dict[str, Any]] = {}
    for msg in replies:
        node = msg.metadata.src_node_id
        if not msg.has_error():
            metrics = {k: v for mr in msg.content.metric_records.values() for k, v in mr.items()}
            sites[strategy.site_nodes.get(node, str(node))] = {"status": "ok", "bytes_up": up_bytes[node],
                                                               "groups_up": up_groups[node], **metrics}
    for node, (status, reason) in screened.problems.items():
        name = strategy.site_nodes.get(node, str(node))
        sites.setdefault(name, {}).update(status=status, reason=reason)
        log(WARNING, "Round %d: site %s %s: %s", plan.round, name, status, reason)
    for node in asked:
        entry = sites.setdefault(strategy.site_nodes.get(node, str(node)), {"status": "timeout"})
        entry["bytes_down"] = down
        entry.setdefault("bytes_up", 0)
        if node in screened.norms:
            entry["update_norm"] = screened.norms[node]
    weighed = apply_server_weights(screened.accepted, strategy.weighted_by_key, strategy.site_nodes,
                                   state.site_patients, cfg.weight_cap)
    for node, entry in weighed.items():
        sites[strategy.site_nodes.get(node, str(node))].update(entry)
    aggregated, agg_metrics = None, None
    if len(screened.accepted) >= cfg.min_sites:
        agg_arrays, agg_metrics = outer.aggregate_train(plan.round, screened.accepted)
        aggregated = None if agg_arrays is None else {k: v.numpy() for k, v in agg_arrays.items()}
    else:
        log(WARNING, "Round %d: %d accepted repl(ies) < min-sites %d: the model is not updated",
            plan.round, len(screened.accepted), cfg.min_sites)
    state.end_round(plan, aggregated)
    line = {"round": plan.round, "phase": plan.phase, "global_step": plan.global_step,
            "local_steps": plan.local_steps, "lr": plan.lrs[0], "momentum": plan.momentum,
            "hard_sync": plan.hard_sync, "upload": list(plan.upload), "download": list(plan.download),
            "updated": aggregated is not None, "accepted": len(screened.accepted),
            "aggregation": cfg.aggregation,
            "aggregate": dict(agg_metrics) if agg_metrics is not None else {},
            "target_gap": state.target_gap(), "sites": sites, "wait_s": wait_s,
            "round_time_s": time.perf_counter() - t0}
    record_privacy(outer, line, state.accountants)
    save_round(state, out_dir, plan.global_step + plan.local_steps, plan.phase, line,
               sorted(strategy.site_nodes.values()))
    return line
