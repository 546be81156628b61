"""bench/learning.py: the criteria and table on hand-made numbers, and the whole benchmark at toy size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _learning_table import baselines_of, criteria, runs_of, table, verdicts  # noqa: E402


def _model(auroc, seed, diff=None, disp=2.5, late=0.2, below=48, copy=0.5, not_worse=None):
    m = {"seed": seed, "checkpoint": f"/x/{seed}", "probes": {"mean_auroc": auroc, "mean_auroc_sd": 0.02},
         "geometry": {"displacement_per_task": disp, "hidden": {"ratio": 4.0}},
         "drift": {"curve": [late] * 48, "copy_curve": [copy] * 48, "early": 0.3, "late": late,
                   "converges": below == 48 and late <= 0.3, "hours_below_copy": below,
                   "hours_not_worse_than_copy": below if not_worse is None else not_worse}}
    if diff is not None:
        m["paired"] = {"untrained": f"untrained@{seed}", "diff": diff, "diff_sd": 0.01}
    return m


def _baselines(lr, grus):
    probes = lambda a, top=0.9: {"probes": {"mean_auroc": a, "tasks": {"t": {"auroc": top}}}}  # noqa: E731
    return {"last_value_lr": probes(lr), **{f"gru@{s}": probes(g) for s, g in enumerate(grus)}}


def test_criteria_pass_and_fail_on_hand_made_numbers():
    models = {}
    for s in range(3):
        models[f"curriculum@{s}"] = _model(0.80, s, diff=0.05 if s else 0.02)  # seed 0 gains too little
        models[f"naive@{s}"] = _model(0.75, s, diff=0.0, disp=1.5, late=0.25, below=47 - s, not_worse=48)
        models[f"untrained@{s}"] = _model(0.75, s, disp=1.0, late=0.9, below=0)
        models[f"federated@{s}"] = _model(0.795, s, diff=0.045)
    models["local-a@0"] = _model(0.77, 0)
    models["local-b@0"] = _model(0.78, 0)
    runs = runs_of(models)
    assert {r["model"] for r in runs} == {"curriculum", "naive", "untrained", "federated", "local-a",
                                          "local-b"}
    assert len(runs[0]["drift_abs"]) == 48 and len(runs[0]["copy_baseline"]) == 48
    base = baselines_of(_baselines(0.78, [0.81, 0.79, 0.80]), [0, 1, 2])
    assert base["last_value_lr"] == {"0": 0.78, "1": 0.78, "2": 0.78} and base["gru"]["1"] == 0.79
    c = criteria(runs, base, task_max=0.9)
    assert c["curriculum_minus_untrained_every_seed"] == {"value": 0.02, "threshold": 0.03, "op": ">=",
                                                          "pass": False}
    assert c["curriculum_vs_last_value_lr"]["pass"] and c["curriculum_vs_gru"]["value"] == pytest.approx(0.0)
    assert c["curriculum_vs_gru"]["pass"]  # equal counts as "at least as good"
    assert c["federated_vs_centralized"]["pass"]  # -0.005 >= -0.01
    assert c["federated_vs_local-a"]["pass"] and not c["federated_vs_local-b"]["pass"]  # +0.025, +0.015
    assert c["displacement_per_task"]["pass"] and c["displacement_per_task_vs_naive"]["value"] == 1.0
    assert c["displacement_hidden_reported"]["pass"] and c["rollout_below_copy_every_hour"]["pass"]
    late = c["curriculum_late_vs_naive"]
    assert late["value"] == pytest.approx(-0.05) and late["pass"]
    assert not c["gru_minus_last_value_lr"]["pass"]  # +0.02 < 0.03
    assert c["baselines_no_task_above_0.97"]["pass"]
    text = verdicts(c)
    assert "FAIL     curriculum_minus_untrained_every_seed: +0.020 (needs >= 0.03)" in text
    assert "PASS     rollout_below_copy_every_hour: 48 (needs >= 48)" in text
    md = table(runs, base)
    assert "| curriculum | 0,1,2 | 0.800 ± 0.000 | s0: +0.020 ± 0.010, s1: +0.050 ± 0.010" in md
    assert "| untrained | 0,1,2 |" in md and "| 0/48 (0) | 0/3 |" in md
    assert "| 45/48 (48) | 0/3 |" in md  # naive: the fewest hours below copy, none worse (paired)
    assert "| gru | 0,1,2 | 0.800 ± 0.010 |" in md


def test_criteria_of_models_not_run_are_not_run():
    runs = runs_of({"curriculum@0": _model(0.8, 0, diff=0.04)})
    c = criteria(runs, {"last_value_lr": {}, "gru": {}})
    assert c["federated_vs_centralized"]["pass"] is None and c["curriculum_vs_gru"]["pass"] is None
    assert c["curriculum_minus_untrained_every_seed"]["pass"] is True
    assert not any(k.startswith("federated_vs_local") for k in c)
    assert "not run  federated_vs_centralized: –" in verdicts(c)


def test_the_train_args_objective_reaches_the_federated_run():
    from learning import train_loss_keys

    from clin_jepa.federation import FederationConfig
    from clin_jepa.losses import LossConfig

    keys = train_loss_keys("--lr 0.01 --set loss.concept_block_hours=6 --set model.obs_horizons=0 "
                           "--rollout-steps 3 --set loss.jepa_to_encoder=false --set loss.context_mask=0")
    assert keys == {"loss-concept-block-hours": 6, "loss-rollout-steps": 3, "loss-jepa-to-encoder": False,
                    "loss-context-mask": 0}
    fed = FederationConfig.from_run_config(keys)  # keys and values the run config takes as they are
    assert fed.loss == LossConfig(concept_block_hours=6, rollout_steps=3, jepa_to_encoder=False,
                                  context_mask=0.0)
    assert train_loss_keys("--lr 0.01 --set curriculum.warmup=0.2") == {}


@pytest.mark.slow
def test_learning_benchmark_end_to_end_at_toy_size(tmp_path):
    """2 sites × 60 patients, 20 steps, 2 seeds, no Flower: the schema, then a rerun that trains nothing."""
    cmd = [sys.executable, str(ROOT / "bench" / "learning.py"), "--out", str(tmp_path / "l"), "--sites", "2",
           "--patients", "60", "--steps", "20", "--seeds", "0", "1", "--no-federated", "--local-seeds", "1",
           "--bootstrap", "20", "--gru-epochs", "2", "--variant", "short=--lr 0.002"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = json.loads((tmp_path / "l" / "learning.json").read_text())
    assert set(out) == {"settings", "runs", "baselines", "criteria"}
    models = {(r["model"], r["seed"]) for r in out["runs"]}
    assert {("curriculum", 0), ("curriculum", 1), ("naive", 1), ("untrained", 0), ("short", 1),
            ("local-hospital_a", 0), ("local-hospital_b", 0)} <= models
    assert ("local-hospital_a", 1) not in models  # --local-seeds 1
    cur = next(r for r in out["runs"] if r["model"] == "curriculum" and r["seed"] == 1)
    assert len(cur["drift_abs"]) == 48 and len(cur["copy_baseline"]) == 48
    assert cur["paired_diff"] is not None and cur["displacement_hidden"] is not None
    short = next(r for r in out["runs"] if r["model"] == "short" and r["seed"] == 0)
    assert short["paired_diff"] is not None
    assert set(out["baselines"]["gru"]) == {"0", "1"}
    assert out["criteria"]["federated_vs_centralized"]["pass"] is None
    assert "PASS" in first.stdout or "FAIL" in first.stdout
    assert "load " in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert not [x for x in lines if x.startswith("trained ")]
    assert sum(x.startswith("reuse ") for x in lines) == len(out["runs"])
