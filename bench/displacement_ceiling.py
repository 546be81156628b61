"""How far can the displacement ratio go on the synthetic hospitals? References for the learning benchmark.

Usage: python bench/displacement_ceiling.py [--seeds 0] [--patients 1000] [--sites 3] [--work DIR]

The benchmark asks the trained encoder for a per-task displacement ratio >= 2.0 (issue 12). This script
computes the same ratio (``clin_jepa.evaluation.geometry``: held-out stays, hours 19–24 vs the last 6
in-stay hours up to 72, per task and for the generator's hidden cohorts) on three representations
that need no training:

* ``hidden state`` — the generator's own organ-system state per hour (``Course.state``), standardized:
  what an encoder that recovered the patient's true condition exactly could reach;
* ``noiseless values`` — every measurement's true value per hour, standardized (no noise, no gaps);
* ``model inputs`` — the hourly inputs every model reads (``clin_jepa.data.features.sequence_inputs``:
  carried-forward values, measured flags, hours since, treatments), standardized;

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


def representations(seed: int, n_patients: int, n_sites: int, work: Path) -> tuple[dict, dict]:
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
    reps: dict[str, list[np.ndarray]] = {"hidden state": [], "noiseless values": [], "model inputs": []}
    meta: dict[str, list] = {"mask": [], "labels": [], "hidden": []}
    for i, (profile, cfg, st) in enumerate(zip(hospital_profiles(n_sites), cfgs, sites, strict=True)):
        held = st.split == SPLIT_CODE["held_out"]
        h = simulate_site(profile, i, n_patients, seed)  # the same stream synthesize drew the site from
        keys = zip(h.subject_id[h.stay_subject], h.admit_us, strict=True)
        row = {(int(s), int(a)): k for k, (s, a) in enumerate(keys)}
        idx = np.array([row[(int(s), int(a))]
                        for s, a in zip(st.subject_id[held], st.stay_start[held], strict=True)])
        reps["hidden state"].append(h.course.state[idx, :HOURS])
        reps["noiseless values"].append(np.stack([h.course.truth[c][idx, :HOURS] for c in MEASUREMENTS], -1))
        sub = st.subset("held_out")
        reps["model inputs"].append(sequence_inputs(sub.bins, sub.treat, sub.time, disc.n_bins, HOURS))
        meta["mask"].append(sub.mask)
        meta["labels"].append(sub.labels)
        meta["hidden"].append(hidden_cohorts(sub.subject_id, sub.stay_start, read_ground_truth(cfg.data_path),
                                             str(cfg.data_path)))
        meta["tasks"] = list(sub.tasks)
    out = {k: np.concatenate(v).astype(np.float64) for k, v in reps.items()}
    return out, {k: (v if k == "tasks" else np.concatenate(v)) for k, v in meta.items()}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="data seeds")
    p.add_argument("--patients", type=int, default=1000)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="keep the hospitals here (default: a temp dir)")
    args = p.parse_args(argv)
    for seed in args.seeds:
        if args.work:
            reps, meta = representations(seed, args.patients, args.sites, args.work / f"seed{seed}")
        else:
            with tempfile.TemporaryDirectory(prefix="disp-ceiling-") as tmp:
                reps, meta = representations(seed, args.patients, args.sites, Path(tmp))
        print(f"data seed {seed}: {args.sites} × {args.patients} patients, {len(meta['mask'])} held-out "
              f"stays; {load_average()}")
        print(f"  {'representation':34s} {'per task':>8} {'hidden':>7}   per task: "
              + " ".join(t[:8] for t in meta["tasks"]))
        for name, r in table(reps, meta):
            print(f"  {name:34s} {r['per_task']:8.3f} {r['hidden']:7.3f}   "
                  + " ".join(f"{v:8.2f}" for v in r["tasks"].values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
