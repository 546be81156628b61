"""bench/latent_geometry.py: gap curves and PCA truncations on hand-made latents, then a real checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import latent_geometry as lg  # noqa: E402


def test_gap_curve_tells_drift_from_swing():
    """Drifting stays move 0.1 per hour along one axis; swinging ones alternate ±1 every hour. The drift's
    curve grows with the gap (0.6 per 6 h), the swing's stays at the distance of two window means."""
    n, t = 4, 72
    z = np.zeros((n, t, 2))
    z[:2, :, 0] = 0.1 * np.arange(t)
    z[2:, :, 1] = np.where(np.arange(t) % 2, 1.0, -1.0)
    mask = np.ones((n, t), bool)
    mask[1, 50:] = False  # a stay that ends early drops out of the long gaps only
    groups = {"drift": np.array([1, 1, 0, 0], bool), "swing": np.array([0, 0, 1, 1], bool)}
    curve = lg.gap_curve(z, mask, groups, gaps=(-12, 6, 24, 48))
    assert np.isclose(curve["drift"][6][0], 0.6) and np.isclose(curve["drift"][24][0], 2.4)
    assert curve["drift"][6][1] == 2 and np.isclose(curve["drift"][48][0], 4.8)
    assert curve["drift"][48][1] == 1
    assert np.isclose(curve["drift"][-12][0], 1.2)
    assert all(np.isclose(curve["swing"][g][0], 0.0) for g in (-12, 6, 24))  # even windows average out
    assert lg.window_means(z, 5).shape == (n, 2)


def test_pca_truncation_keeps_the_direction_that_separates_the_cohorts():
    """Sick stays travel 4 units along axis 0 after hour 24, every stay also jitters on 20 other axes: the
    top direction holds the travel, so its ratio beats the full latent's."""
    rng = np.random.default_rng(0)
    n, t, d = 40, 72, 21
    z = rng.normal(0.0, 0.5, (n, t, d))
    z[:20, 24:, 0] += 4.0
    mask = np.ones((n, t), bool)
    sick = np.arange(n) < 20

    def ratio(x):
        from clin_jepa.evaluation.geometry import displacement, group_ratio

        return group_ratio(displacement(x, mask), sick, ~sick)["ratio"]

    rows = lg.pca_ratios(z, mask, ratio, ks=(1, 8, 64))
    assert [k for k, _, _ in rows] == [1, 8]  # ks above the width are skipped
    (_, share1, top1), (_, share8, top8) = rows
    assert 0.0 < share1 < share8 <= 1.0
    assert top1 > top8 > 1.0 and top1 > ratio(z)


def test_diagnoses_a_real_checkpoint_and_refuses_a_missing_one(tmp_path: Path):
    cli = [sys.executable, "-m", "clin_jepa.cli"]
    data, run = tmp_path / "data", tmp_path / "run"
    subprocess.run([*cli, "synth", "--out", str(data), "--sites", "2", "--patients", "60", "--seed", "0"],
                   check=True, capture_output=True, cwd=ROOT)
    sites = sorted(str(p) for p in data.glob("*.yaml"))
    subprocess.run([*cli, "train", "--sites", *sites, "--out", str(run), "--steps", "0", "--preset", "tiny",
                    "--no-progress"], check=True, capture_output=True, cwd=ROOT)
    script = [sys.executable, str(ROOT / "bench" / "latent_geometry.py"), "--sites", *sites, "--ckpts"]
    ok = subprocess.run([*script, str(run / "ckpt.pt")], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "load " in ok.stdout and "per task" in ok.stdout and "gap curve, stable" in ok.stdout
    assert "treatments frozen" in ok.stdout and "PCA k" in ok.stdout
    bad = subprocess.run([*script, str(tmp_path / "nope.pt")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope.pt" in bad.stderr
