"""Round 0: find out which node plays which site and merge the sites' value histograms into one
discretization (quantile edges + vocabulary) that every site tokenizes with.

Only arrays of counts travel (``SiteStatistics.to_arrays``); no rows. A resumed run asks the nodes only
for their site names (``what="identify"``) and keeps the discretization stored in its checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from clin_jepa.config import is_site_name
from clin_jepa.data.concepts import ConceptTable, load_concepts
from clin_jepa.data.stats import Discretization, SiteStatistics, merge_statistics, quantile_edges
from clin_jepa.errors import ClinJepaError
from clin_jepa.federation import FederationConfig

QUERY = "query.statistics"
# How long to wait for the expected number of nodes to connect before starting with those present.
CONNECT_GRACE_S = 30.0
# The first contact with a site starts its worker and reads all its data: never wait less than this.
MIN_STATS_TIMEOUT_S = 120.0


@dataclass
class SiteRoster:
    """``sites`` maps node id -> site name; ``stats`` node id -> its statistics (empty when identifying);
    ``problems`` node id -> why it is not part of the run."""

    sites: dict[int, str] = field(default_factory=dict)
    stats: dict[int, SiteStatistics] = field(default_factory=dict)
    problems: dict[int, str] = field(default_factory=dict)

    def discretization(self, n_bins: int) -> Discretization:
        return quantile_edges(merge_statistics(list(self.stats.values())), n_bins)


def _wait_for_nodes(grid: Grid, expected: int, min_sites: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + min(timeout, CONNECT_GRACE_S)
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected or (time.monotonic() > deadline and len(nodes) >= min_sites):
            return nodes
        if time.monotonic() > deadline + timeout:
            raise ClinJepaError(f"only {len(nodes)} node(s) connected after {timeout:.0f} s; min-sites is "
                                f"{min_sites}")
        time.sleep(1.0)


def registered_names(grid: Grid) -> dict[int, str]:
    """node id -> the name the coordinator registered with the node's public key (``flwr supernode
    register --name``, deploy/coordinator/register-nodes.sh); empty in simulation, where nodes have none."""
    return {int(n.node_id): str(n.name) for n in grid.get_nodes() if getattr(n, "name", "")}


def name_mismatch(node: int, claimed: str, registered: dict[int, str], sites: set[str]) -> str | None:
    """Why ``node`` may not play site ``claimed``: its registered key bears another site's name. A node's
    key is what the SuperLink authenticates; the site name is only what the node says.

    A registered name binds only when it is a site name of this round (``sites``: every name the nodes
    claimed): a coordinator who registers keys as ``node-1``, ``node-2`` has bound no key to a site, and
    those nodes are not refused for it (deploy/README.md: register each key under its site's name)."""
    bound = registered.get(node)
    if bound is None or bound == claimed or bound not in sites:
        return None
    return (f"claims site {claimed!r} but its key is registered as {bound!r}; a node plays only the site "
            "its key was registered for")


class MalformedReply(ClinJepaError):
    """A node's statistics-round reply cannot be used; the text says why (it is logged, the node is left
    out of the run)."""


def read_site_reply(msg: Message | None, what: str,
                    catalog: ConceptTable) -> tuple[str, SiteStatistics | None]:
    """The site name (and, for ``what="statistics"``, the statistics) in one node's reply to the
    statistics round. Any reply a hostile or broken node can send (no reply, an error, a missing or
    mistyped record, an invalid name, another catalog, arrays of another shape or dtype, negative, NaN or
    absurd counts) raises :class:`MalformedReply`, never anything else: the ServerApp must go on."""
    if msg is None:
        raise MalformedReply("no reply before round-timeout")
    if msg.has_error():
        raise MalformedReply(f"client failed: {str(msg.error.reason).strip()[-600:]}")
    info = msg.content.config_records.get("site")
    name = None if info is None else info.get("site")
    if not is_site_name(name):
        raise MalformedReply(f"no valid site name in the reply (a ConfigRecord 'site' with a string 'site' "
                             f"of 1-64 letters, digits, '_', '.', '-'; got {str(name)[:80]!r})")
    if what != "statistics":
        return name, None
    theirs = info.get("catalog", "")
    if theirs != catalog.fingerprint():
        raise MalformedReply(f"site {name!r} tokenizes with concept catalog {str(theirs)[:12]}, not the "
                             f"run's {catalog.describe()}")
    record = msg.content.array_records.get("statistics")
    if record is None:
        raise MalformedReply(f"site {name!r}: malformed statistics: no ArrayRecord 'statistics'")
    try:
        arrays = {k: v.numpy() for k, v in record.items()}
        return name, SiteStatistics.from_arrays(arrays)
    except Exception as exc:  # noqa: BLE001 - whatever the bytes hold, the node is only left out
        raise MalformedReply(f"site {name!r}: malformed statistics: {exc}") from None


def query_sites(grid: Grid, cfg: FederationConfig, what: str = "statistics") -> SiteRoster:
    """Ask every connected node for its site (and statistics); nodes that fail are left out and logged."""
    expected = len(cfg.site_configs)
    nodes = _wait_for_nodes(grid, expected, cfg.min_sites, cfg.round_timeout)
    if len(nodes) < expected:
        log(WARNING, "Only %d node(s) for %d site config(s): in simulation run `flwr run . "
            "--federation-config 'num-supernodes=%d'`", len(nodes), expected, expected)
    catalog = load_concepts()
    content = RecordDict({"config": ConfigRecord({"what": what})})
    messages = [Message(content, dst_node_id=n, message_type=QUERY) for n in nodes]
    roster = SiteRoster()
    registered = registered_names(grid)
    timeout = max(cfg.round_timeout, MIN_STATS_TIMEOUT_S)
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(messages, timeout=timeout)}
    answers: dict[int, tuple[str, SiteStatistics | None]] = {}
    for node in nodes:
        try:
            answers[node] = read_site_reply(replies.get(node), what, catalog)
        except MalformedReply as exc:
            roster.problems[node] = str(exc)
    sites = {name for name, _ in answers.values()}
    for node, (name, stats) in answers.items():
        if mismatch := name_mismatch(node, name, registered, sites):
            roster.problems[node] = mismatch
        elif name in roster.sites.values():
            roster.problems[node] = f"site {name!r} is already played by another node"
        else:
            roster.sites[node] = name
            if stats is not None:
                roster.stats[node] = stats
    for node, why in roster.problems.items():
        log(WARNING, "Statistics round: node %d left out: %s", node, why)
    log(INFO, "Statistics round: sites %s", sorted(roster.sites.values()))
    if len(roster.sites) < cfg.min_sites:
        raise ClinJepaError(f"only {len(roster.sites)} site(s) answered the statistics round "
                            f"({sorted(roster.sites.values())}); min-sites is {cfg.min_sites}. Problems: "
                            + "; ".join(f"node {n}: {w}" for n, w in roster.problems.items()))
    return roster
