"""Poisson-sampled batches for DP-SGD, by patient, drawn with the site's private randomness.

The unit of privacy is the patient (subject), not the ICU stay: each draw selects every patient
independently with probability ``rate`` and takes ONE of that patient's rows (chosen uniformly with the
same private randomness). A patient therefore appears at most once per batch, with probability ``rate``
however many stays they have, and contributes at most one clipped per-sample gradient (norm <= C) per
step: exactly the sampled Gaussian mechanism the accountant composes, with add/remove-one-patient as the
neighbouring relation. The rate is ``batch_size / number of patients`` (``planning.sample_rate``).

Privacy amplification by subsampling holds only if nobody outside the site knows which rows were drawn,
so the sampler is seeded from the operating system's entropy, never from the run's public seed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import numpy as np

from clin_jepa.data.dataset import Batch, batch_from_indices
from clin_jepa.data.tokenize import SiteTensors


def n_patients(tensors: SiteTensors) -> int:
    """Distinct subjects behind the rows: the population the DP sampling rate is a share of."""
    return int(len(np.unique(tensors.subject_id)))


def poisson_batches(tensors: SiteTensors, rate: float,
                    rng: np.random.Generator | None = None) -> Iterator[Batch]:
    """Endless batches in which every patient joins each batch independently with probability ``rate``,
    represented by one of their rows drawn at random (batches vary in size and may be empty, as the
    accountant assumes)."""
    if not 0 < rate <= 1:
        raise ValueError(f"Poisson sampling rate must be in (0, 1], got {rate}")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    _, patient = np.unique(tensors.subject_id, return_inverse=True)
    order = np.argsort(patient, kind="stable")  # rows grouped by patient
    counts = np.bincount(patient)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    while True:
        chosen = np.flatnonzero(rng.random(len(counts)) < rate)
        pick = starts[chosen] + (rng.random(len(chosen)) * counts[chosen]).astype(np.int64)
        yield batch_from_indices(tensors, np.sort(order[pick]))
