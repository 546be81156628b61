"""One federated training round at a real site (``client.site.Site``) on a small MEDS dataset: the seam
the tests use to see what a round does with the run config, without a server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fixtures import random_events, write_meds, write_site_config

from client.site import ServerSchedule, Site
from clin_jepa.config import load_site_config
from clin_jepa.curriculum import Phase
from clin_jepa.data.stats import quantile_edges
from clin_jepa.federation import FederationConfig, plan_round
from clin_jepa.models import ClinJEPA, get_group_state
from server.state import model_config_for

Groups = dict[str, dict[str, np.ndarray]]


def small_site(root: Path, patients: int = 16, hours: int = 40) -> Site:
    data = write_meds(root / "data", random_events(patients, seed=0, hours=hours))
    return Site(load_site_config(write_site_config(root / "s.yaml", data, root / "state", site="s")))


def site_round(site: Site, fed: FederationConfig, rnd: int, run_id: str = "run",
               init_seed: int = 0) -> tuple[Groups, Groups, dict[str, float]]:
    """(groups sent, groups trained, metrics) of training round ``rnd`` from a fresh model of ``fed``'s
    preset, sized as the server sizes it."""
    disc = quantile_edges(site.statistics(), fed.n_bins)
    torch.manual_seed(init_seed)
    model = ClinJEPA(model_config_for(fed, disc))
    sent = {g: {k: v.numpy().copy() for k, v in get_group_state(model, g).items()} for g in model.groups()}
    plan = plan_round(rnd, fed)
    phase = Phase(plan.phase, plan.phase_index, "encoder" in plan.upload, "predictor" in plan.upload,
                  1.0, 0, 0)
    schedule = ServerSchedule(phase, plan.lrs, plan.global_step)
    trained, metrics = site.train_round(model.cfg, disc, sent, schedule, fed.local_steps, fed, run_id, rnd)
    return sent, trained, metrics
