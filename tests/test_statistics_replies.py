"""A hostile or broken node's statistics-round reply leaves that node out with a logged reason; it never
raises in the ServerApp. Replies are real Flower Messages and RecordDicts; only the transport (the Grid
that would carry them through a SuperLink) is a stand-in that hands back the prepared replies
(``tests/reply_grid.py``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.stats import SiteStatistics
from clin_jepa.federation import FederationConfig
from server.stats_round import MalformedReply, query_sites, read_site_reply
from tests.reply_grid import ReplyGrid, as_serverapp_process


def _honest_arrays(seed: int) -> dict[str, np.ndarray]:
    table = load_concepts()
    rng = np.random.default_rng(seed)
    stats = SiteStatistics.empty()
    hr = table.index("heart_rate")
    stats.add_values(np.full(200, hr), rng.normal(80, 10, 200), np.arange(200) % 50)
    stats.n_subjects, stats.n_stays = 50, 60
    return stats.to_arrays()


def _content(name: object = "a", arrays: dict[str, np.ndarray] | None = None, catalog: object = None,
             ) -> RecordDict:
    fingerprint = load_concepts().fingerprint() if catalog is None else catalog
    info = ConfigRecord({"site": name, "catalog": fingerprint})
    arrays = _honest_arrays(0) if arrays is None else arrays
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return RecordDict({"site": info, "statistics": record, "metrics": MetricRecord({"num-examples": 60})})


def _with(**arrays: np.ndarray) -> Callable[[str], RecordDict]:
    return lambda name: _content(name, {**_honest_arrays(1), **arrays})


def _without(key: str) -> Callable[[str], RecordDict]:
    return lambda name: _content(name, {k: v for k, v in _honest_arrays(1).items() if k != key})


HIST = _honest_arrays(0)["hist"]
# name -> the reply content that node sends (None: an error reply); every one of them must be left out
HOSTILE: dict[str, Callable[[str], RecordDict | None]] = {
    "no site record": lambda name: RecordDict({"statistics": _content(name)["statistics"]}),
    "site record is an ArrayRecord": lambda name: RecordDict({
        "site": ArrayRecord({"site": Array(np.zeros(3))}), "statistics": _content(name)["statistics"]}),
    "site name is a number": lambda name: _content(7),
    "site name is a path": lambda name: _content("../../etc"),
    "site name is bytes": lambda name: _content(b"a"),
    "catalog is a number": lambda name: _content(name, catalog=3),
    "another catalog": lambda name: _content(name, catalog="0" * 64),
    "no statistics record": lambda name: RecordDict({"site": _content(name)["site"]}),
    "statistics as a ConfigRecord": lambda name: RecordDict({"site": _content(name)["site"],
                                                             "statistics": ConfigRecord({"hist": 1})}),
    "hist of another shape": _with(hist=np.zeros((3, 7), np.int64)),
    "hist of floats with NaN": _with(hist=np.where(HIST > 0, np.nan, 0.0)),
    "negative counts": _with(counts=-np.ones_like(_honest_arrays(0)["counts"])),
    "negative patients": _with(n_subjects=np.array([-5], np.int64)),
    "absurd counts": _with(hist=np.full_like(HIST, 10**15)),
    "two patient counts": _with(n_subjects=np.array([5, 6], np.int64)),
    "no n_stays": _without("n_stays"),
    "error reply": lambda name: None,
}


def _reply(node: int, content: RecordDict | None) -> Message:
    meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="q",
                    group_id="0", created_at=0.0, ttl=60.0, message_type="query.statistics")
    if content is None:
        return Message(metadata=meta, error=Error(code=0, reason="the site's handler failed with KeyError"))
    return Message(metadata=meta, content=content)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_each_malformed_reply_is_refused_with_a_reason(case):
    with pytest.raises(MalformedReply) as info:
        read_site_reply(_reply(9, HOSTILE[case]("evil")), "statistics", load_concepts())
    assert str(info.value).strip()


def test_an_honest_reply_is_read():
    name, stats = read_site_reply(_reply(1, _content("a")), "statistics", load_concepts())
    assert name == "a" and stats is not None and stats.n_subjects == 50 and stats.hist.sum() == 200
    name, stats = read_site_reply(_reply(1, RecordDict({"site": ConfigRecord({"site": "a"})})), "identify",
                                  load_concepts())
    assert (name, stats) == ("a", None)


def test_the_statistics_round_leaves_every_malformed_node_out(caplog, monkeypatch):
    as_serverapp_process(monkeypatch)
    replies = {1: _reply(1, _content("a")), 2: _reply(2, _content("b", _honest_arrays(2)))}
    hostile = {}
    for i, case in enumerate(sorted(HOSTILE), start=10):
        replies[i] = _reply(i, HOSTILE[case](f"evil{i}"))
        hostile[i] = case
    cfg = FederationConfig(site_configs=("a.yaml", "b.yaml"), min_sites=2, round_timeout=1.0)
    with caplog.at_level("WARNING"):
        roster = query_sites(ReplyGrid(replies, silent=[99]), cfg, "statistics")
    assert roster.sites == {1: "a", 2: "b"}
    assert set(roster.stats) == {1, 2}
    assert set(roster.problems) == {*hostile, 99}
    assert roster.problems[99] == "no reply before round-timeout"
    for node in roster.problems:
        assert f"node {node} left out" in caplog.text
    disc = roster.discretization(10)  # the bins come from the honest sites only
    assert disc.concepts == ("heart_rate",)
    assert np.all(np.diff(disc.edges["heart_rate"]) > 0)
