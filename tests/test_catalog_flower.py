"""Under `flwr run`: a federation with its own concept catalog (one extra concept) trains, and a site whose
config agreed to another catalog is refused at the statistics round, before round 1 (issue 13)."""

from __future__ import annotations

import json

import pytest
from flwr_utils import REPO, FlowerSandbox
from test_catalog import CVP, cvp_site, write_catalog

from clin_jepa.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_custom_catalog_federation_and_a_site_with_another_catalog_refused(tmp_path):
    catalog = write_catalog(tmp_path / "fed.yaml", [CVP])
    other = write_catalog(tmp_path / "other.yaml", [{**CVP, "range": [0, 30]}])
    sites = [cvp_site(tmp_path, "site0", 0), cvp_site(tmp_path, "site1", 1),
             cvp_site(tmp_path, "site2", 2, concept_catalog=str(other))]
    out = tmp_path / "ckpt"
    config = {"preset": "tiny", "hours": 48, "num-rounds": 2, "local-steps": 2, "batch-size": 8,
              "site-configs": ",".join(map(str, sites)), "checkpoint-dir": str(out),
              "synth-if-missing": False, "round-timeout": 120.0, "min-sites": 2,
              "concept-catalog": str(catalog)}
    with FlowerSandbox(tmp_path / "flower") as fl:
        proc = fl.run(REPO, config, num_supernodes=3)
    assert fl.survivors() == [], "Flower/Ray processes survived the run"
    assert proc.returncode == 0 and "Final checkpoint" in proc.stdout, proc.stdout[-6000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    stats = lines[0]
    assert stats["phase"] == "statistics" and set(stats["sites"]) == {"site0", "site1"}
    assert any("site site2 agreed to concept catalog" in why for why in stats["failed"].values()), stats
    assert all("site2" not in ln["sites"] for ln in lines[1:])
    disc = load_checkpoint(out / "ckpt.pt").load_discretization()
    assert disc is not None and "cvp" in disc.concepts
