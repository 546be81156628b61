"""Federated evaluation rounds and the per-round progress line.

After the training rounds that ``clin_jepa.evaluation.federated.evaluates_after`` picks (run config
``eval-every``), the server sends the global model (every group) to each site in a Flower *evaluate*
message; the ClientApp's ``evaluate`` handler measures it on that site's stays and answers with
small-cell-safe aggregates only. The server keeps the keys it knows (``from_wire``), takes held-out-weighted
means and appends one ``{"round": r, "phase": "evaluate", ...}`` line to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from clin_jepa.data.tasks import load_tasks
from clin_jepa.evaluation.federated import aggregate, from_wire
from clin_jepa.federation import FederationConfig
from clin_jepa.models import GROUPS
from server.state import ServerState, append_metrics


def run_evaluation(grid: Grid, cfg: FederationConfig, state: ServerState, site_nodes: dict[int, str],
                   rnd: int, out_dir: Path) -> dict[str, Any]:
    """One evaluation round of the global model after training round ``rnd``; returns its metrics line."""
    t0 = time.perf_counter()
    arrays = ArrayRecord({k: Array(v) for k, v in state.flat(GROUPS).items()})
    config = ConfigRecord({"server-round": rnd, "run-id": state.run_id,
                           "discretization": json.dumps(state.disc.to_dict()),
                           "model-config": json.dumps(state.model_cfg.to_dict())})
    nodes = [n for n in grid.get_node_ids() if n in site_nodes]
    messages = [Message(RecordDict({"arrays": arrays, "config": config}), message_type=MessageType.EVALUATE,
                        dst_node_id=n) for n in nodes]
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    tasks = [t.name for t in load_tasks()]
    sites: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for msg in replies:
        name = site_nodes.get(msg.metadata.src_node_id, str(msg.metadata.src_node_id))
        if msg.has_error():
            failed[name] = f"error: {msg.error.reason}"
            continue
        record = {k: v for mr in msg.content.metric_records.values() for k, v in mr.items()}
        sites[name] = from_wire(record, tasks)
    for node in set(nodes) - {m.metadata.src_node_id for m in replies}:
        failed[site_nodes[node]] = "timeout"
    for name, why in failed.items():
        log(WARNING, "Evaluation after round %d: site %s %s", rnd, name, why)
    line = {"round": rnd, "phase": "evaluate", "sites": sites, "aggregate": aggregate(sites, tasks),
            "failed": failed, "round_time_s": time.perf_counter() - t0}
    append_metrics(out_dir, line)
    return line


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def log_progress(cfg: FederationConfig, line: dict[str, Any], evaluation: dict[str, Any] | None,
                 first_round: int, started: float) -> str:
    """Log (and return) one line per round: phase, loss, accepted sites, eval AUROC when there is one,
    and the time left at the mean pace of the rounds this process ran."""
    rnd = int(line["round"])
    done = rnd - first_round + 1
    left = (time.perf_counter() - started) / done * (cfg.num_rounds - rnd)
    loss = line["aggregate"].get("loss")
    text = (f"Round {rnd}/{cfg.num_rounds} ({line['phase']}): loss "
            f"{'–' if loss is None else f'{float(loss):.4f}'}, {line['accepted']}/{len(line['sites'])} sites "
            f"accepted")
    if evaluation is not None:
        auroc = evaluation["aggregate"]["mean_auroc"]
        text += f", eval AUROC {'suppressed' if auroc is None else f'{auroc:.3f}'}"
    text += f", {line['round_time_s']:.1f} s, ETA {_duration(left)}"
    log(INFO, "%s", text)
    return text
