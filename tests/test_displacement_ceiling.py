"""bench/displacement_ceiling.py: the reference ratios are the evaluation's own, on the generator's stays."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import displacement_ceiling as dc  # noqa: E402


def test_ratios_on_hand_made_trajectories():
    """Deteriorating stays travel 3 units after hour 24, stable ones 1: the hidden ratio is exactly 3, and
    a task positive only for the deteriorating stays reads 3 too."""
    n, t, f = 6, 72, 4
    x = np.zeros((n, t, f))
    travel = np.array([3.0, 3.0, 3.0, 1.0, 1.0, 1.0])
    x[:, 24:, 0] = travel[:, None]
    meta = {"mask": np.ones((n, t), bool), "labels": np.array([[1.0]] * 3 + [[0.0]] * 3), "tasks": ["t"],
            "hidden": np.array([1, 1, 1, 0, 0, 0], np.int8)}
    r = dc.ratios(x, meta)
    assert np.isclose(r["hidden"], 3.0) and np.isclose(r["per_task"], 3.0)
    assert np.isclose(r["tasks"]["t"], 3.0)
    z = dc.standardized(x * 5.0 + 7.0, meta["mask"])
    assert np.allclose(z.reshape(-1, f)[:, 0].mean(), 0.0) and np.isclose(z.reshape(-1, f)[:, 0].std(), 1.0)
    assert np.isclose(dc.ratios(z, meta)["hidden"], 3.0)  # a ratio does not depend on the units


def test_representations_join_every_held_out_stay_to_its_simulated_course(tmp_path: Path):
    reps, meta = dc.representations(0, 60, 3, tmp_path)
    n = len(meta["mask"])
    assert n > 0 and meta["labels"].shape[0] == n and meta["hidden"].shape == (n,)
    assert {k: v.shape[:2] for k, v in reps.items()} == {k: (n, dc.HOURS) for k in reps}
    # the joined course is the stay's own: a stay that deteriorates in the horizon moves its hidden state
    # further than a stable one, on average
    rows = dict(dc.table(reps, meta))
    assert rows["hidden state"]["hidden"] > 1.5
    assert set(rows) == {f"{k}{s}" for k in reps for s in ("", ", layer-normed")}
    gaps = dc.gap_lines(reps, meta)
    assert len(gaps) == len(reps) and all(" / " in line and "+24 h" in line for line in gaps)


def test_causal_averages_halve_the_distance_to_a_step_in_one_half_life():
    x = np.zeros((1, 40, 1))
    x[:, 10:] = 1.0
    out = dc.causal_averages(x, (6.0,))
    assert out.shape == (1, 40, 2) and np.array_equal(out[..., 0], x[..., 0])
    assert np.all(out[0, :10, 1] == 0.0)  # nothing from the future leaks into earlier hours
    assert np.isclose(out[0, 9 + 6, 1], 0.5)
    # the average starts at the first hour's value, not at zero
    assert np.allclose(dc.causal_averages(np.full((2, 5, 3), 2.0), (3.0,)), 2.0)
