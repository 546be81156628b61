"""Nothing small leaves the site: the statistics round suppresses cells behind fewer than min-patients
patients (counted in patients, not events), and the shared bins still come out of what is left."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.metadata import Metadata

from clin_jepa.cli import main as cli
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.stats import HIST_CELLS, SiteStatistics, quantile_edges


def _hand_made() -> SiteStatistics:
    """heart_rate: subject 1 has five values in one cell; subjects 2 and 3 one value each in another."""
    table = load_concepts()
    hr = table.index("heart_rate")
    stats = SiteStatistics.empty()
    stats.add_values(np.full(7, hr), np.array([50.0] * 5 + [120.0, 120.0]), np.array([1] * 5 + [2, 3]))
    stats.n_subjects, stats.n_stays = 3, 3
    return stats


def test_cells_are_suppressed_by_patients_not_events():
    stats = _hand_made()
    hr = load_concepts().index("heart_rate")
    assert stats.hist[hr].sum() == 7 and stats.cell_patients[hr].sum() == 3
    kept = stats.suppressed(2)
    assert kept.hist[hr].sum() == 2  # the five events of one patient are gone, the two patients stay
    assert int(np.count_nonzero(kept.hist[hr])) == 1
    assert kept.counts[hr] == 7  # the concept count is behind 3 patients
    assert not stats.suppressed(4).hist.any() and not stats.suppressed(4).counts.any()  # 3 < 4 patients
    assert set(kept.to_arrays()) == {"hist", "counts", "n_subjects", "n_stays"}  # patient counts stay home


@pytest.mark.timeout(300)
def test_statistics_reply_carries_no_cell_of_a_single_patient(tmp_path):
    from client.client_app import app

    assert cli(["synth", "--out", str(tmp_path), "--sites", "1", "--patients", "40", "--seed", "4"]) == 0
    site = tmp_path / "hospital_a.yaml"
    replies = {}
    run_config = {"site-configs": str(site), "synth-if-missing": False}
    for k in (1, 3):
        context = Context(run_id=1, node_id=5, node_config={"site-config": str(site), "min-patients": k},
                          state=RecordDict(), run_config=run_config)
        meta = Metadata(run_id=1, message_id=f"s{k}", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                        group_id="0", created_at=time.time(), ttl=3600.0, message_type="query.statistics")
        msg = Message(RecordDict({"config": ConfigRecord({"what": "statistics"})}), metadata=meta)
        replies[k] = SiteStatistics.from_arrays({n: a.numpy() for n, a in app(msg, context).content[
            "statistics"].items()})
    raw, safe = replies[1], replies[3]
    singles = int((raw.hist == 1).sum())
    assert singles > 0  # the demo data has cells holding exactly one measurement ...
    assert not ((safe.hist > 0) & (safe.hist < 3)).any()  # ... none (nor any cell under 3 events) leaves
    assert ((safe.hist == raw.hist) | (safe.hist == 0)).all()  # cells are dropped whole, never altered
    assert safe.hist.sum() > 0.9 * raw.hist.sum()  # the bulk of the distribution is still shared
    disc = quantile_edges(safe, 10)  # every site gets these same edges from the server
    assert all(np.all(np.diff(e) > 0) for e in disc.edges.values())
    assert safe.hist.shape[1] == HIST_CELLS


def test_each_metric_needs_its_own_patients():
    from clin_jepa.security.disclosure import round_patients, suppress_by_metric

    subjects = np.array([7, 7, 7, 7, 8, 8, 9, 9])  # 8 stays of 3 patients
    whole, last = round_patients(subjects, batch_size=4, seed=0, step0=0, n_steps=5)
    assert whole == 3 and last <= 3  # patients, not stays: 8 stays never count as 8
    metrics = {"num-examples": 20, "loss": 0.5, "monitor-eff_rank": 3.0, "lr": 1e-3, "train-rows": 8}
    kept = suppress_by_metric(metrics, 3, round_n=3, last_batch_n=2, min_patients=3)
    assert kept == {"num-examples": 20, "loss": 0.5, "lr": 1e-3, "train-rows": 8}  # the last batch: 2 < 3
    assert set(suppress_by_metric(metrics, 3, 2, 2, 3)) == {"num-examples", "lr", "train-rows"}
    assert set(suppress_by_metric(metrics, 2, 3, 3, 3)) == {"num-examples"}  # the whole split is too small
