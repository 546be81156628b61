"""An error reply tells the coordinator the kind of failure, never text that can name patients.

Flower sends a raised exception's text as the error reply's reason. Here a real site's subject splits
lose three training subjects after the statistics round; the next training round's tokenizer raises a
DataValidationError that lists their subject ids. The real ClientApp must let only the exception's type
leave (``client.errors.contain_errors``), while a ConfigError about the run still leaves verbatim.
"""

from __future__ import annotations

import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from test_reply_allowlist import NODE, _message
from test_reply_values import _context, _statistics

from client.client_app import app
from client.errors import SiteFailure
from clin_jepa.cli import main as cli
from clin_jepa.config import load_site_config
from clin_jepa.data.stats import SiteStatistics, quantile_edges
from clin_jepa.errors import ConfigError
from clin_jepa.federation import FederationConfig, plan_round
from server.state import ServerState
from server.strategy import ClinJepaFedAvg


@pytest.mark.timeout(300)
def test_a_data_error_naming_subjects_leaves_the_site_as_its_type_only(tmp_path):
    assert cli(["synth", "--out", str(tmp_path), "--sites", "1", "--patients", "40", "--seed", "7"]) == 0
    site = tmp_path / "hospital_a.yaml"
    run_config = {"num-rounds": 2, "local-steps": 1, "preset": "tiny", "synth-if-missing": False,
                  "site-configs": str(site), "min-sites": 1, "hours": 48, "batch-size": 4}
    cfg = FederationConfig.from_run_config(run_config)
    stats = {k: v.numpy() for k, v in _statistics(site, run_config).content["statistics"].items()}
    state = ServerState.initial(cfg, quantile_edges(SiteStatistics.from_arrays(stats), cfg.n_bins))
    strategy = ClinJepaFedAvg(cfg, state, {NODE: "hospital_a"})

    splits_path = load_site_config(site).data_path / "metadata" / "subject_splits.parquet"
    splits = pd.read_parquet(splits_path)
    gone = splits.loc[splits["split"] == "train", "subject_id"].head(3).tolist()
    splits[~splits["subject_id"].isin(gone)].to_parquet(splits_path, index=False)

    def train(**config) -> None:
        record = ConfigRecord({**dict(strategy.round_config(1)), **config})
        arrays = ArrayRecord({k: Array(v) for k, v in state.flat(plan_round(1, cfg).upload).items()})
        content = RecordDict({"arrays": arrays, "config": record})
        app(_message(content, "train", 1), _context(site, run_config))

    with pytest.raises(SiteFailure) as failure:
        train()
    text = str(failure.value)
    assert "DataValidationError" in text and "train handler" in text
    assert not any(str(s) in text for s in gone), text  # before: "subjects [...] have no valid split"
    with pytest.raises(ConfigError, match="run id"):  # the run's own mistakes still explain themselves
        train(**{"run-id": "../x"})
