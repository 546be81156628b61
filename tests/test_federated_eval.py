"""Federated evaluation without Flower: a site's evaluation is ``clin-jepa evaluate`` on that site alone,
the rounds it runs after, the server's weighted means, and the self-contained HTML reports."""

from __future__ import annotations

import base64
import re
import subprocess

import numpy as np
import pytest
from deploy_harness import BIN

from client.site import Site
from clin_jepa.checkpoint import save_checkpoint
from clin_jepa.config import load_site_config
from clin_jepa.data.stats import compute_site_statistics, quantile_edges
from clin_jepa.data.tasks import load_tasks
from clin_jepa.evaluation.federated import aggregate, evaluates_after, from_wire
from clin_jepa.evaluation.rounds import ROUND_PLOTS, write_rounds_report
from clin_jepa.evaluation.runner import EvalSettings, evaluate
from clin_jepa.evaluation.screenshot import find_chromium, ink_share, screenshot
from clin_jepa.federation import FederationConfig
from server.state import ServerState

TASKS = [t.name for t in load_tasks()]


@pytest.fixture(scope="module")
def site_and_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedeval")
    done = subprocess.run([str(BIN / "clin-jepa"), "synth", "--out", str(root), "--sites", "1", "--patients",
                           "150", "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    site = root / "hospital_a.yaml"
    cfg = FederationConfig.from_run_config({"preset": "tiny", "site-configs": str(site), "seed": 4})
    disc = quantile_edges(compute_site_statistics(load_site_config(site)), cfg.n_bins)
    state = ServerState.initial(cfg, disc)
    ckpt = root / "run" / "ckpt.pt"
    save_checkpoint(ckpt, state.checkpoint(0, "predictor_warmup", {}, ["hospital_a"]))
    return site, ckpt, state, cfg


def test_site_evaluation_equals_clin_jepa_evaluate_on_that_site(site_and_ckpt, tmp_path):
    site, ckpt, state, cfg = site_and_ckpt
    settings = EvalSettings(bootstrap=0, baselines=False)
    report = evaluate([ckpt], [site], tmp_path / "report", settings=settings, progress=False)
    central = report["models"]["run"]
    wire = Site(load_site_config(site)).evaluate(state.model_cfg, state.disc, state.groups, cfg,
                                                 min_patients=1)
    compared = 0
    for task, score in central["probes"]["tasks"].items():
        if score["skipped"] is None:
            assert wire[f"eval-auroc-{task}"] == pytest.approx(score["auroc"], abs=1e-6)
            assert wire[f"eval-auprc-{task}"] == pytest.approx(score["auprc"], abs=1e-6)
            compared += 1
        else:
            assert f"eval-auroc-{task}" not in wire
    assert compared >= 4
    assert wire["eval-mean_auroc"] == pytest.approx(central["probes"]["mean_auroc"], abs=1e-6)
    assert wire["eval-drift_abs_late"] == pytest.approx(central["drift"]["late"], abs=1e-6)
    assert wire["eval-displacement_ratio"] == pytest.approx(central["geometry"]["displacement_per_task"],
                                                            abs=1e-6)
    # clin-jepa evaluate's report.html: one file, every plot inside it, none referenced from outside
    page = (tmp_path / "report" / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert not re.search(r'src="(?!data:)', page) and "<table>" in page


@pytest.mark.parametrize(("every", "rounds", "expected"), [
    # phases of the default 10-round schedule: warmup 1, joint 2-6, align 7-8, finalize 9-10 (the sync
    # phase rounds to no round of its own): each phase's last round
    (0, 10, [1, 6, 8, 10]),
    (3, 10, [3, 6, 9, 10]),
    (-1, 10, []),
])
def test_evaluation_rounds_follow_eval_every(every, rounds, expected):
    cfg = FederationConfig.from_run_config({"num-rounds": rounds, "eval-every": every})
    assert [r for r in range(1, rounds + 1) if evaluates_after(r, cfg)] == expected


def test_server_means_weight_by_held_out_stays_over_the_sites_that_sent_a_value():
    a = from_wire({"num-examples": 30.0, "eval-mean_auroc": 0.8, f"eval-auroc-{TASKS[0]}": 0.9}, TASKS)
    b = from_wire({"num-examples": 10.0, "eval-mean_auroc": 0.6}, TASKS)  # suppressed its task scores
    assert b["tasks"][TASKS[0]] == {"auroc": None, "auprc": None} and b["drift_abs_late"] is None
    agg = aggregate({"a": a, "b": b}, TASKS)
    assert agg["mean_auroc"] == pytest.approx((30 * 0.8 + 10 * 0.6) / 40)
    assert agg["tasks"][TASKS[0]]["auroc"] == pytest.approx(0.9)
    assert agg["tasks"][TASKS[1]]["auroc"] is None and agg["n_held_out"] == 40


def _round_lines() -> list[dict]:
    site = {"status": "ok", "loss": 1.0, "dp-epsilon": 0.5}
    lines = [{"round": 0, "phase": "statistics", "sites": {}}]
    for r in (1, 2):
        lines.append({"round": r, "phase": "joint_refinement", "aggregate": {"loss": 1.0 / r}, "accepted": 2,
                      "sites": {"a": {**site, "loss": 1.0 / r}, "b": site}, "round_time_s": 1.0})
        evaluated = from_wire({"num-examples": 20.0, "eval-mean_auroc": 0.6 + 0.1 * r}, TASKS)
        lines.append({"round": r, "phase": "evaluate", "sites": {"a": evaluated},
                      "aggregate": aggregate({"a": evaluated}, TASKS), "failed": {}})
    return lines


def test_rounds_report_embeds_the_three_round_plots(tmp_path):
    lines = _round_lines()
    evaluated = lines[-1]["sites"]["a"]
    write_rounds_report(tmp_path, lines)
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(ROUND_PLOTS)
    assert all((tmp_path / p).exists() for p in ROUND_PLOTS)
    text = (tmp_path / "report.md").read_text()
    assert "| 2 | joint_refinement | 0.500 | 2/2 | 0.800 |" in text
    assert np.isclose(aggregate({"a": evaluated}, TASKS)["mean_auroc"], 0.8)


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium here (apt-get install -y chromium)")
def test_round_report_renders_in_headless_chromium(tmp_path):
    write_rounds_report(tmp_path, _round_lines())
    page = (tmp_path / "report.html").read_text()
    (tmp_path / "no_images.html").write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', page))
    browser = find_chromium()
    full = ink_share(screenshot(browser, tmp_path / "report.html", tmp_path / "full.png", height=2400))
    bare = ink_share(screenshot(browser, tmp_path / "no_images.html", tmp_path / "bare.png", height=2400))
    # the embedded plots are drawn (about 2 % of the page's pixels here), not only the tables
    assert full > bare + 0.01, (full, bare)
