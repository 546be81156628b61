"""How far can the displacement ratio go on the synthetic hospitals? References for the learning benchmark.

Usage: python bench/displacement_ceiling.py [--seeds 0] [--patients 1000] [--sites 3] [--work DIR] [--trees]

The benchmark asks the trained encoder for a per-task displacement ratio >= 2.0 (issue 12). This script
computes the same ratio (``clin_jepa.evaluation.geometry``: held-out stays, hours 19–24 vs the last 6
in-stay hours up to 72, per task and for the generator's hidden cohorts) on representations that
need no self-supervised training:

* ``hidden state`` — the generator's own organ-system state per hour (``Course.state``), standardized:
  what an encoder that recovered the patient's true condition exactly could reach;
* ``noiseless values`` — every measurement's true value per hour, standardized (no noise, no gaps);
* ``model inputs`` — the hourly inputs every model reads (``clin_jepa.data.features.sequence_inputs``:
  carried-forward values, measured flags, hours since, treatments), standardized;
* ``treatments`` — the treatment indicators alone: how far the care given moves with deterioration;
* ``state estimate`` — a ridge regression from the model inputs to the hidden state, fitted on the
  training stays' hours (supervised by the truth no model is given), from this hour's inputs alone and
  with causal 3–24 h averages of the carried-forward levels: how much of the state a linear read-out of
  the inputs recovers, hour by hour;

each also after a layer norm over features, as the evaluation applies to latents. Same data pipeline as
``bench/synth_check.py`` (federated statistics round, tokenization, pooled splits). Prints one line per
representation with the load average.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._common import load_average  # noqa: E402

CONTEXT, HOURS = 24, 72
HALF_LIVES = (3.0, 6.0, 12.0, 24.0)
TREE_HOURS = 60_000


def representations(seed: int, n_patients: int, n_sites: int, work: Path, trees: bool = False
                    ) -> tuple[dict, dict]:
    """Per representation the (N, 72, F) held-out arrays, and the held-out ``mask``/``labels``/``hidden``/
    ``tasks`` of the pooled sites written to ``work`` with ``seed``."""
    from clin_jepa.data.features import sequence_inputs
    from clin_jepa.data.meds import SPLIT_CODE
    from clin_jepa.data.synth import simulate_site
    from clin_jepa.data.synth.history_check import fresh_sites
    from clin_jepa.data.synth.physiology import MEASUREMENTS
    from clin_jepa.data.synth.profiles import hospital_profiles
    from clin_jepa.evaluation.ground_truth import hidden_cohorts, read_ground_truth

    cfgs, disc, sites = fresh_sites(work, n_sites, n_patients, seed, HOURS)
    every: dict[str, list[np.ndarray]] = {"hidden state": [], "noiseless values": [], "model inputs": [],
                                          "treatments": [], "mask": [], "split": []}
    meta: dict[str, list] = {"labels": [], "hidden": []}
    for i, (profile, cfg, st) in enumerate(zip(hospital_profiles(n_sites), cfgs, sites, strict=True)):
        h = simulate_site(profile, i, n_patients, seed)  # the same stream synthesize drew the site from
        keys = zip(h.subject_id[h.stay_subject], h.admit_us, strict=True)
        row = {(int(s), int(a)): k for k, (s, a) in enumerate(keys)}
        idx = np.array([row[(int(s), int(a))] for s, a in zip(st.subject_id, st.stay_start, strict=True)])
        every["hidden state"].append(h.course.state[idx, :HOURS])
        every["noiseless values"].append(np.stack([h.course.truth[c][idx, :HOURS] for c in MEASUREMENTS], -1))
        every["model inputs"].append(sequence_inputs(st.bins, st.treat, st.time, disc.n_bins, HOURS))
        every["treatments"].append(st.treat[:, :HOURS])
        every["mask"].append(st.mask)
        every["split"].append(st.split)
        sub = st.subset("held_out")
        meta["labels"].append(sub.labels)
        meta["hidden"].append(hidden_cohorts(sub.subject_id, sub.stay_start, read_ground_truth(cfg.data_path),
                                             str(cfg.data_path)))
        meta["tasks"] = list(sub.tasks)
    pooled = {k: np.concatenate(v) for k, v in every.items()}
    held = pooled["split"] == SPLIT_CODE["held_out"]
    fit = pooled["split"] == SPLIT_CODE["train"]
    names = ("hidden state", "noiseless values", "model inputs", "treatments")
    reps = {k: pooled[k][held].astype(np.float64) for k in names}
    reps.update(state_estimates(pooled["model inputs"], pooled["hidden state"], pooled["mask"], fit, held,
                                len(disc.concepts), trees))
    out = {k: (v if k == "tasks" else np.concatenate(v)) for k, v in meta.items()}
    return reps, {"mask": pooled["mask"][held], **out}


def causal_averages(x: np.ndarray, half_lives: tuple[float, ...] = HALF_LIVES) -> np.ndarray:
    """(N, T, F) -> (N, T, F * (1 + len(half_lives))): ``x`` and its exponential moving averages over the
    hours so far, one per half-life."""
    from scipy.signal import lfilter

    out = [x]
    for hl in half_lives:
        keep = 0.5 ** (1.0 / hl)
        # avg_t = keep * avg_{t-1} + (1 - keep) * x_t, started at avg_0 = x_0
        avg, _ = lfilter([1.0 - keep], [1.0, -keep], x, axis=1, zi=keep * x[:, :1])
        out.append(avg)
    return np.concatenate(out, axis=-1)


def state_estimates(inputs: np.ndarray, state: np.ndarray, mask: np.ndarray, fit: np.ndarray,
                    held: np.ndarray, n_levels: int, trees: bool = False) -> dict[str, np.ndarray]:
    """Held-out hourly estimates of the hidden state by ridge regressions fitted on the ``fit`` stays'
    in-stay hours: from this hour's inputs alone, and with causal averages of the carried-forward levels
    (the first ``n_levels`` input columns). A supervised read-out of what the inputs hold about the state,
    hour by hour, for an encoder to aim at; the second shows what averaging over past hours buys. ``trees``
    adds gradient-boosted trees on the second's inputs (minutes)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge

    smoothed = np.concatenate([inputs, causal_averages(inputs[..., :n_levels])[..., n_levels:]], axis=-1)
    views = {"this hour's inputs": inputs, "+ 3-24 h averages": smoothed}
    # each view's training hours and held-out stays, sliced once (they are copies of ~10^5 rows)
    train_x = {k: x[fit][mask[fit]] for k, x in views.items()}
    held_x = {k: x[held] for k, x in views.items()}
    train_y = state[fit][mask[fit]]
    shape = held_x["this hour's inputs"].shape[:2]
    out = {}
    for k in views:
        model = Ridge(alpha=1.0).fit(train_x[k], train_y)
        flat = held_x[k].reshape(-1, held_x[k].shape[-1])
        out[f"state estimate, {k}"] = model.predict(flat).reshape(*shape, -1)
    if trees:
        # a non-linear read-out, on a subsample of hours to keep it to minutes
        xs, flat = train_x["+ 3-24 h averages"], held_x["+ 3-24 h averages"].reshape(-1, smoothed.shape[-1])
        pick = np.random.default_rng(0).choice(len(xs), min(len(xs), TREE_HOURS), replace=False)
        pred = [HistGradientBoostingRegressor(max_iter=200, random_state=0).fit(xs[pick], train_y[pick, j])
                .predict(flat) for j in range(train_y.shape[1])]
        out["state estimate, boosted trees + averages"] = np.stack(pred, -1).reshape(*shape, -1)
    return out


def standardized(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each feature to mean 0, sd 1 over the in-stay hours."""
    m = mask[..., None]
    mean = (x * m).sum((0, 1)) / m.sum()
    sd = np.sqrt((((x - mean) * m) ** 2).sum((0, 1)) / m.sum())
    return (x - mean) / np.where(sd > 0, sd, 1.0)


def ratios(x: np.ndarray, meta: dict) -> dict[str, object]:
    """Per-task and hidden-cohort displacement ratios of (N, T, F) hourly vectors, as the evaluation
    computes them for latents."""
    from clin_jepa.evaluation import geometry

    disp = geometry.displacement(x, meta["mask"], CONTEXT)
    per = geometry.per_task_ratios(disp, meta["labels"], meta["tasks"])
    return {"per_task": per["displacement_per_task"],
            "hidden": geometry.displacement_ratio(disp, meta["hidden"])["ratio"],
            "tasks": {t: r["ratio"] for t, r in per["tasks"].items()}}


def table(reps: dict[str, np.ndarray], meta: dict) -> list[tuple[str, dict]]:
    rows = []
    for name, x in reps.items():
        z = standardized(x, meta["mask"])
        normed = (z - z.mean(-1, keepdims=True)) / np.maximum(z.std(-1, keepdims=True), 1e-9)
        rows += [(name, ratios(z, meta)), (f"{name}, layer-normed", ratios(normed, meta))]
    return rows


def gap_lines(reps: dict[str, np.ndarray], meta: dict) -> list[str]:
    """Per representation (standardized), the window-distance curve of stable and sick stays: what the
    trained latent's curve (bench/latent_geometry.py) is to be read against."""
    from latent_geometry import cohort_groups, gap_curve

    groups = cohort_groups(meta["labels"])
    lines = []
    for name, x in reps.items():
        curve = gap_curve(standardized(x, meta["mask"]), meta["mask"], groups)
        lines.append(f"  gap curve (stable / sick), {name}: " + ", ".join(
            f"{g:+d} h {curve['stable'][g][0]:.2f} / {curve['sick'][g][0]:.2f}" for g in curve["stable"]))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="data seeds")
    p.add_argument("--patients", type=int, default=1000)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="keep the hospitals here (default: a temp dir)")
    p.add_argument("--trees", action="store_true", help="also a boosted-tree state estimate (minutes)")
    p.add_argument("--gaps", action="store_true",
                   help="also each representation's gap curve (bench/latent_geometry.py), standardized")
    args = p.parse_args(argv)
    for seed in args.seeds:
        if args.work:
            reps, meta = representations(seed, args.patients, args.sites, args.work / f"seed{seed}",
                                         args.trees)
        else:
            with tempfile.TemporaryDirectory(prefix="disp-ceiling-") as tmp:
                reps, meta = representations(seed, args.patients, args.sites, Path(tmp), args.trees)
        print(f"data seed {seed}: {args.sites} × {args.patients} patients, {len(meta['mask'])} held-out "
              f"stays; {load_average()}")
        print(f"  {'representation':44s} {'per task':>8} {'hidden':>7}   per task: "
              + " ".join(t[:8] for t in meta["tasks"]))
        for name, r in table(reps, meta):
            print(f"  {name:44s} {r['per_task']:8.3f} {r['hidden']:7.3f}   "
                  + " ".join(f"{v:8.2f}" for v in r["tasks"].values()))
        if args.gaps:
            print("\n".join(gap_lines(reps, meta)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
