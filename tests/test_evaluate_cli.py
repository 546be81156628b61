"""`clin-jepa evaluate` end to end on small synthetic hospitals: report files, and refusals."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clin_jepa.checkpoint import Checkpoint, save_checkpoint
from clin_jepa.cli import main
from clin_jepa.config import load_site_config
from clin_jepa.data.stats import compute_site_statistics, merge_statistics, quantile_edges
from clin_jepa.data.synth import synthesize
from clin_jepa.data.tasks import load_tasks
from clin_jepa.models import ClinJEPA
from clin_jepa.models.config import preset

PLOTS = ("drift_curves.png", "probe_auroc.png", "geometry_projection.png")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: more threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two synthetic hospitals and their pooled discretization (built once for the module)."""
    root = tmp_path_factory.mktemp("eval")
    outputs = synthesize(root / "syn", n_sites=2, n_patients=60, seed=11)
    sites = [str(o.config) for o in outputs]
    disc = quantile_edges(merge_statistics([compute_site_statistics(load_site_config(s)) for s in sites]))
    return root, sites, disc


def make_ckpt(path: Path, disc, seed: int = 0, tasks=None, **dims) -> Path:
    torch.manual_seed(seed)
    cfg = preset("tiny", n_concepts=len(disc.concepts), n_treatments=len(disc.treatments), n_bins=disc.n_bins)
    model = ClinJEPA(dataclasses.replace(cfg, **dims))
    names = [t.name for t in load_tasks()] if tasks is None else tasks
    save_checkpoint(path, Checkpoint.from_model(model, discretization=disc.to_dict(), tasks=names,
                                                curriculum={"mode": "naive"}, step=3, phase="joint"))
    return path


def evaluate(args, capsys):
    rc = main(["evaluate", *map(str, args)])
    return rc, capsys.readouterr()


def test_evaluate_two_checkpoints_writes_the_report(world, tmp_path, capsys):
    root, sites, disc = world
    a = make_ckpt(tmp_path / "a" / "ckpt.pt", disc, seed=0)
    b = make_ckpt(tmp_path / "b.pt", disc, seed=1)
    out = tmp_path / "report"
    rc, cap = evaluate([a, b, "--sites", *sites, "--out", out, "--labels", f"first={a}",
                        "--bootstrap", "20", "--gru-epochs", "2"], capsys)
    assert rc == 0, cap.err
    assert "evaluate" in cap.err and "100%" in cap.err  # the tqdm bar ran to the end
    for name in ("metrics.json", "report.md", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["first", "b"]
    assert set(metrics["baselines"]) == {"last_value_lr", "gru"}
    tasks = [t.name for t in load_tasks()]
    assert metrics["data"]["tasks"] == tasks and metrics["data"]["discretization"] == disc.fingerprint()
    n_held = metrics["data"]["n_stays"]["held_out"]
    for m in metrics["models"].values():
        assert len(m["drift"]["curve"]) == 48 and m["drift"]["counts"][0] == n_held
        assert m["drift"]["counts"][-1] <= m["drift"]["counts"][0]  # stays end: fewer at hour 48
        assert m["mode"] == "naive" and m["step"] == 3
        assert set(m["probes"]["tasks"]) == set(tasks)
        scored = [t for t in m["probes"]["tasks"].values() if not t["skipped"]]
        assert scored, "no task could be scored on this data"
        for t in scored:
            assert 0.0 <= t["auroc"] <= 1.0
            assert t["auroc_ci"][0] <= t["auroc"] <= t["auroc_ci"][1]
    # different weights, same data: the two models' drift curves differ
    assert metrics["models"]["first"]["drift"]["curve"] != metrics["models"]["b"]["drift"]["curve"]
    md = (out / "report.md").read_text()
    for label in ("first", "b", "last_value_lr", "gru"):
        assert f"| {label} |" in md


def _refused(args, capsys, out: Path, needle: str):
    rc, cap = evaluate([*args, "--out", out, "--no-baselines", "--bootstrap", "0"], capsys)
    assert rc == 2
    assert "error:" in cap.err and needle in cap.err, cap.err
    assert "Traceback" not in cap.err
    assert not out.exists(), "a refused evaluation must not write anything"


def test_refuses_model_whose_bins_do_not_match_its_discretization(world, tmp_path, capsys):
    _, sites, disc = world
    bad = make_ckpt(tmp_path / "bad.pt", disc, n_bins=disc.n_bins + 2)
    _refused([bad, "--sites", *sites], capsys, tmp_path / "out", "n_bins")


def test_refuses_checkpoints_with_different_discretizations(world, tmp_path, capsys):
    _, sites, disc = world
    stats = merge_statistics([compute_site_statistics(load_site_config(s)) for s in sites])
    other = quantile_edges(stats, n_bins=5)
    a = make_ckpt(tmp_path / "a.pt", disc)
    b = make_ckpt(tmp_path / "b.pt", other)
    _refused([a, b, "--sites", *sites], capsys, tmp_path / "out", "different discretizations")


def test_refuses_checkpoint_made_for_other_tasks(world, tmp_path, capsys):
    _, sites, disc = world
    bad = make_ckpt(tmp_path / "t.pt", disc, tasks=["in_icu_mortality"])
    _refused([bad, "--sites", *sites], capsys, tmp_path / "out", "tasks")


def test_refuses_model_with_other_time_features(world, tmp_path, capsys):
    _, sites, disc = world
    bad = make_ckpt(tmp_path / "time.pt", disc, n_time=3)
    _refused([bad, "--sites", *sites], capsys, tmp_path / "out", "n_time")


def test_refuses_corrupt_checkpoint_and_unknown_label(world, tmp_path, capsys):
    _, sites, disc = world
    good = make_ckpt(tmp_path / "good.pt", disc)
    corrupt = tmp_path / "corrupt.pt"
    raw = bytearray(good.read_bytes())
    raw[-10] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    _refused([corrupt, "--sites", *sites], capsys, tmp_path / "out", "hash mismatch")
    _refused([good, "--sites", *sites, "--labels", f"x={tmp_path / 'nope.pt'}"], capsys, tmp_path / "out2",
             "--labels")


@pytest.mark.slow
def test_evaluate_a_checkpoint_trained_by_the_cli(world, tmp_path):
    """The real path: `clin-jepa train` (tiny, a few steps) then `clin-jepa evaluate` in subprocesses."""
    _, sites, _ = world
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "clin_jepa.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*cmd, "train", "--sites", *sites, "--out", str(run), "--preset", "tiny", "--steps", "6",
                    "--batch-size", "16", "--no-progress"], check=True, capture_output=True, env=env)
    out = tmp_path / "report"
    res = subprocess.run([*cmd, "evaluate", str(run / "ckpt.pt"), "--sites", *sites, "--out", str(out),
                          "--bootstrap", "10", "--gru-epochs", "1", "--quiet"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["run"]["mode"] == "curriculum" and metrics["models"]["run"]["step"] == 6
    assert all((out / p).stat().st_size > 0 for p in PLOTS)


def test_refuses_the_same_site_twice(world, tmp_path, capsys):
    _, sites, disc = world
    good = make_ckpt(tmp_path / "good.pt", disc)
    _refused([good, "--sites", sites[0], sites[0]], capsys, tmp_path / "out", "twice")


def test_untrained_control_is_the_seeded_init_of_a_trained_run(world, tmp_path):
    """`train --steps 0 --seed S` writes exactly the weights a trained run of seed S starts from."""
    from clin_jepa.checkpoint import load_checkpoint
    from clin_jepa.trainer import TrainerConfig, train_centralized

    _, sites, _ = world
    assert main(["train", "--sites", *sites, "--out", str(tmp_path / "u"), "--steps", "0", "--seed", "4",
                 "--preset", "tiny", "--no-progress"]) == 0
    train_centralized(sites, tmp_path / "t", TrainerConfig(preset="tiny", steps=5, seed=4), progress=False,
                      stop_at=0)  # the checkpoint a 5-step run writes before its first step
    u, t = (load_checkpoint(tmp_path / d / "ckpt.pt") for d in ("u", "t"))
    assert u.step == 0 and u.phase == "init" and u.extra["trainer"]["steps"] == 0
    assert u.extra["trainer"]["seed"] == 4 and u.discretization == t.discretization
    um, tm = u.build_model(), t.build_model()
    for (name, a), (_, b) in zip(um.state_dict().items(), tm.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_paired_report_with_hidden_cohorts(world, tmp_path, capsys):
    _, sites, _ = world
    for name, steps in (("u", "0"), ("t", "4")):
        assert main(["train", "--sites", *sites, "--out", str(tmp_path / name), "--steps", steps, "--seed",
                     "2", "--preset", "tiny", "--batch-size", "8", "--no-progress"]) == 0
    u, t = tmp_path / "u" / "ckpt.pt", tmp_path / "t" / "ckpt.pt"
    out = tmp_path / "report"
    rc, cap = evaluate([t, u, "--sites", *sites, "--out", out, "--labels", f"cur@2={t}", f"untrained@2={u}",
                        "--bootstrap", "20", "--no-baselines", "--ground-truth", "--quiet"], capsys)
    assert rc == 0, cap.err
    metrics = json.loads((out / "metrics.json").read_text())
    cur = metrics["models"]["cur@2"]
    assert cur["seed"] == 2 and cur["paired"]["untrained"] == "untrained@2"
    assert cur["paired"]["diff"] == pytest.approx(
        cur["probes"]["mean_auroc"] - metrics["models"]["untrained@2"]["probes"]["mean_auroc"])
    assert cur["paired"]["diff_sd"] >= 0 and cur["probes"]["mean_auroc_sd"] > 0
    assert len(cur["drift"]["copy_curve"]) == 48 and isinstance(cur["drift"]["converges"], bool)
    geo = cur["geometry"]
    assert geo["hidden"]["n_deteriorating"] > 0 and geo["hidden"]["n_stable"] > 0
    assert set(geo["tasks"]) == {t.name for t in load_tasks()} and "any_label" in geo
    assert "vs untrained@2" in cap.out and "hidden-cohort" in cap.out
    assert f"below copy at {cur['drift']['hours_below_copy']}/48 hours" in cap.out
    assert "| cur | 2 |" in (out / "report.md").read_text()


def test_refuses_ground_truth_that_is_not_there(world, tmp_path, capsys):
    root, sites, disc = world
    good = make_ckpt(tmp_path / "good.pt", disc)
    bare = synthesize(tmp_path / "bare", n_sites=1, n_patients=20, seed=1)[0]
    (bare.root / "ground_truth.parquet").unlink()
    _refused([good, "--sites", str(bare.config), "--ground-truth"], capsys, tmp_path / "out",
             "no ground-truth file")


def test_set_overrides_reach_the_model_loss_and_curriculum(world, tmp_path, capsys):
    from clin_jepa.checkpoint import load_checkpoint

    _, sites, _ = world
    assert main(["train", "--sites", *sites, "--out", str(tmp_path / "v"), "--steps", "0", "--preset", "tiny",
                 "--set", "model.obs_horizons=0", "--set", "model.horizons=[4]", "--set", "loss.obs_weight=0",
                 "--set", "loss.jepa_to_encoder=false", "--set", "curriculum.lr=0.002", "--no-progress"]) == 0
    ck = load_checkpoint(tmp_path / "v" / "ckpt.pt")
    model = ck.build_model()
    assert model.cfg.obs_horizons == 0 and model.predictor.obs_head is None and model.cfg.horizons == (4,)
    loss = ck.extra["trainer"]["loss"]
    assert loss["obs_weight"] == 0 and not loss["jepa_to_encoder"]
    assert ck.curriculum["lr"] == 0.002
    wrong_kind = ("loss.context_mask=abc", "loss.concept_block_hours=6.5", "curriculum.lr=fast",
                  "model.enc_layers=1.5")
    for bad in ("loss.nope=1", "obs_weight=0", "model.horizons=[1]", *wrong_kind):
        capsys.readouterr()
        assert main(["train", "--sites", *sites, "--out", str(tmp_path / "w"), "--steps", "0", "--preset",
                     "tiny", "--set", bad, "--no-progress"]) == 2, bad
        assert not (tmp_path / "w").exists()
        if bad in wrong_kind:  # named, not a TypeError from deep inside
            assert f"{bad.split('=')[0]}: " in capsys.readouterr().err, bad
