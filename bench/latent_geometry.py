"""Where a trained latent's displacement comes from: diagnostics for the learning benchmark's ≥ 2.0 criterion.

Usage: python bench/latent_geometry.py --sites OUT/data/*.yaml --ckpts OUT/runs/curriculum@0/ckpt.pt [...]

For each checkpoint, on the held-out stays of ``--sites`` (tokenized with the checkpoint's bins), from the
layer-normed target-encoder latents the evaluation reads (``clin_jepa.evaluation.embed.encode``):

* ``per task`` — the evaluation's per-task displacement ratio (``geometry.per_task_ratios``);
* ``PCA k`` — the same ratio on the latents projected onto their top-k principal directions (fitted on
  the held-out in-stay hours), beside the share of variance those k hold: whether the movement of the
  stays that turn sick lies in the latent's main directions and the stable stays' in its tail;
* ``gap curve`` — the mean distance between each stay's 6-hour window ending at hour 23 and windows ending
  ``g`` hours earlier or later, for stays stable on every task and stays positive for some task: a curve
  that keeps rising with the gap is drift, one that is flat is the hour-to-hour swing of the measurements;
* ``treatments frozen`` — the ratio with every hour after the prediction time given hour 23's treatments:
  how much of the displacement the latent takes from the treatment inputs.

Prints one block per checkpoint with the load average.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._common import load_average  # noqa: E402

CONTEXT, HOURS, WINDOW = 24, 72, 6
GAPS = (-12, -6, 6, 12, 24, 36, 48)
PCA_KS = (1, 2, 4, 8, 16, 32)


def window_means(z: np.ndarray, end: int, window: int = WINDOW) -> np.ndarray:
    """(N, T, D) -> (N, D): the mean over hours ``end - window + 1 .. end``."""
    return z[:, end - window + 1 : end + 1].mean(axis=1)


def gap_curve(z: np.ndarray, mask: np.ndarray, groups: dict[str, np.ndarray], gaps: tuple[int, ...] = GAPS,
              ref: int = CONTEXT - 1) -> dict[str, dict[int, tuple[float, int]]]:
    """Per group (boolean row mask) and gap g: (mean distance between the window ending at ``ref`` and the
    one ending at ``ref + g``, stays counted); only stays in the stay at both windows' last hours."""
    base = window_means(z, ref)
    out: dict[str, dict[int, tuple[float, int]]] = {name: {} for name in groups}
    for g in gaps:
        end = ref + g
        if end - WINDOW + 1 < 0 or end >= z.shape[1]:
            continue
        dist = np.linalg.norm(window_means(z, end) - base, axis=1)
        inside = mask[:, end] & mask[:, ref]
        for name, rows in groups.items():
            sel = rows & inside
            out[name][g] = (float(dist[sel].mean()) if sel.any() else float("nan"), int(sel.sum()))
    return out


def cohort_groups(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Row masks of the stays negative on every task ("stable") and positive for some task ("sick"), as
    ``geometry.cohorts`` splits them."""
    from clin_jepa.evaluation import geometry

    split = geometry.cohorts(labels)
    return {"stable": split == geometry.STABLE, "sick": split == geometry.DETERIORATING}


def pca_ratios(z: np.ndarray, mask: np.ndarray, ratio, ks: tuple[int, ...] = PCA_KS
               ) -> list[tuple[int, float, float]]:
    """(k, share of variance in the top k directions, ``ratio`` of the projection) per k <= D."""
    from sklearn.decomposition import PCA

    pca = PCA().fit(z[mask].astype(np.float64))
    share = np.cumsum(pca.explained_variance_ratio_)
    centred = z.astype(np.float64) - pca.mean_
    return [(k, float(share[k - 1]), float(ratio(centred @ pca.components_[:k].T)))
            for k in ks if k <= len(share)]


def diagnose(model, held) -> list[str]:
    """The lines printed for one model on the held-out stays ``held`` (SiteTensors)."""
    from clin_jepa.evaluation import geometry
    from clin_jepa.evaluation.embed import encode

    def ratio(x: np.ndarray) -> float:
        disp = geometry.displacement(x, held.mask, CONTEXT)
        return geometry.per_task_ratios(disp, held.labels, list(held.tasks))["displacement_per_task"]

    z = encode(model, held, context=CONTEXT, horizon=None).target
    lines = [f"  per task {ratio(z):.3f}"]
    lines.append("  PCA k (variance share): " + ", ".join(f"{k} ({s:.2f}) {r:.3f}"
                                                        for k, s, r in pca_ratios(z, held.mask, ratio)))
    curve = gap_curve(z, held.mask, cohort_groups(held.labels))
    for name, points in curve.items():
        lines.append(f"  gap curve, {name}: " + ", ".join(f"{g:+d} h {d:.2f} (n={n})"
                                                         for g, (d, n) in points.items()))
    frozen = copy.copy(held)
    frozen.treat = held.treat.copy()
    frozen.treat[:, CONTEXT:] = held.treat[:, CONTEXT - 1 : CONTEXT]
    z_frozen = encode(model, frozen, context=CONTEXT, horizon=None).target
    lines.append(f"  treatments frozen after hour {CONTEXT - 1}: per task {ratio(z_frozen):.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sites", type=Path, nargs="+", required=True, help="site configs (clin-jepa synth)")
    p.add_argument("--ckpts", type=Path, nargs="+", required=True, help="checkpoints to diagnose")
    args = p.parse_args(argv)
    import torch

    from clin_jepa.errors import ClinJepaError
    from clin_jepa.evaluation.loading import check_against_data, load_models, load_sites

    torch.set_num_threads(1)
    try:
        models = load_models(args.ckpts, {})
        data, _ = load_sites(args.sites, models[0].disc, HOURS)
        for m in models:
            check_against_data(m, data)
    except ClinJepaError as exc:
        print(f"latent_geometry: {exc}", file=sys.stderr)
        return 2
    held = data.subset("held_out")
    print(f"{len(held.mask)} held-out stays; {load_average()}")
    for m in models:
        print(m.path)
        print("\n".join(diagnose(m.model, held)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
