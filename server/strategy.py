"""Phase-aware FedAvg: the server's curriculum decides what each training message carries.

``ClinJepaFedAvg`` keeps Flower's ``FedAvg.aggregate_train`` untouched (Flower's DP wrappers and their
accountant require exactly that method); the phase logic lives in ``configure_train``. The same phase logic
is mixed into Flower's robust strategies (``FedMedian``, ``FedTrimmedAvg``, ``Krum``, ``MultiKrum``,
``Bulyan``) when the run config asks for one (``aggregation``; soundness checked in
``clin_jepa.aggregation``), again with their own ``aggregate_train``:

* ``arrays`` (the one ArrayRecord of a message) are the groups the phase trains, as ``<group>.<param>``;
  clients return exactly these keys, which is also what Flower's clipping mods and wrappers expect;
* the ConfigRecord carries the plan (phase, global step, lr, momentum, ...), the shared discretization
  (JSON) and the read-only groups (frozen ``E`` and the target ``Ē``) as one ``.npz`` blob under
  ``frozen-groups`` — a second ArrayRecord would break Flower's client-side clipping mods. When ``Ē``
  equals ``E`` bitwise (warmup, and from the hard sync on) it is not sent: ``target-is-encoder`` says
  so and the client copies ``E``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from clin_jepa.federation import TARGET, FederationConfig, pack_arrays, plan_round, sample_sites
from server.privacy import CLIENT_LEVEL, wrap_central_dp
from server.state import ServerState

FROZEN_KEY = "frozen-groups"
TARGET_IS_ENCODER = "target-is-encoder"


class PhaseAware:
    """The curriculum's side of a strategy, mixed in before a Flower strategy (FedAvg or a robust one):
    the round's messages, over the site nodes found in the statistics round. Weights (``num-examples``)
    are set by the server before aggregation (``server.weights``), never taken from a reply."""

    def __init__(self, cfg: FederationConfig, state: ServerState, site_nodes: dict[int, str],
                 **robust: Any) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=cfg.min_sites,  # type: ignore[call-arg]
                         min_evaluate_nodes=0, min_available_nodes=cfg.min_sites, **robust)
        self.cfg = cfg
        self.state = state
        self.site_nodes = dict(site_nodes)
        self.last_frozen_bytes = 0

    def round_config(self, server_round: int) -> ConfigRecord:
        """Everything but the trained arrays that a client needs to run round ``server_round``."""
        plan = plan_round(server_round, self.cfg)
        # Ē equals E bitwise in warmup and from the hard sync on: send it once, as E, and say so.
        target_is_encoder = self.state.target_equals_encoder()
        read_only = tuple(g for g in plan.frozen if not (g == TARGET and target_is_encoder))
        frozen = pack_arrays(self.state.flat(read_only))
        self.last_frozen_bytes = len(frozen)
        return ConfigRecord({
            "server-round": server_round, "phase": plan.phase, "phase-index": plan.phase_index,
            "global-step": plan.global_step, "local-steps": plan.local_steps, "total-steps": plan.total_steps,
            "lr": plan.lrs[0], "lr-steps": list(plan.lrs), "momentum": plan.momentum,
            "trains": ",".join(plan.upload),
            "run-id": self.state.run_id, "discretization": json.dumps(self.state.disc.to_dict()),
            "model-config": json.dumps(self.state.model_cfg.to_dict()), FROZEN_KEY: frozen,
            TARGET_IS_ENCODER: target_is_encoder,
        })

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per connected site node sampled for the round (``fraction-train``); ``config``
        entries (e.g. a DP wrapper's clipping norm) are kept and the round's plan is added."""
        merged = ConfigRecord({**dict(config), **dict(self.round_config(server_round))})
        nodes = sample_sites([n for n in grid.get_node_ids() if n in self.site_nodes], server_round, self.cfg)
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: merged})  # type: ignore[attr-defined]
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in nodes]


class ClinJepaFedAvg(PhaseAware, FedAvg):
    """The default: FedAvg of the accepted replies, weighted by the server's weights."""


def build_strategy(cfg: FederationConfig, state: ServerState, site_nodes: dict[int, str]) -> PhaseAware:
    """The phase-aware strategy for ``cfg.aggregation`` (a FedAvg subclass in every case: Flower's robust
    strategies derive from FedAvg and replace only ``aggregate_train``)."""
    f = cfg.aggregation_malicious
    robust: dict[str, tuple[type, dict[str, Any]]] = {
        "median": (FedMedian, {}),
        "trimmed-mean": (FedTrimmedAvg, {"beta": cfg.aggregation_beta}),
        "krum": (Krum, {"num_malicious_nodes": f}),
        # average the min-sites - f replies closest to the others (the honest ones when f are hostile)
        "multi-krum": (MultiKrum, {"num_malicious_nodes": f, "num_nodes_to_select": cfg.min_sites - f}),
        "bulyan": (Bulyan, {"num_malicious_nodes": f}),
    }
    if cfg.aggregation == "fedavg":
        return ClinJepaFedAvg(cfg, state, site_nodes)
    base, kwargs = robust[cfg.aggregation]
    cls = type(f"ClinJepa{base.__name__}", (PhaseAware, base), {})
    return cls(cfg, state, site_nodes, **kwargs)


def wrap_for_privacy(strategy: PhaseAware, cfg: FederationConfig) -> Strategy:
    """The strategy the round loop calls: ``strategy`` itself unless central DP is switched on.

    Central DP wrappers are Flower's own (``DifferentialPrivacy*FixedClipping``, with Flower's accountant;
    see ``server.privacy``); they wrap this strategy unchanged because ``aggregate_train`` is FedAvg's.
    """
    if cfg.dp_central == "off":
        return strategy
    return wrap_central_dp(strategy, cfg, len(strategy.site_nodes),
                           strategy.state.accountants.get(CLIENT_LEVEL))
