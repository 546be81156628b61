"""Poisson-sampled batches for DP-SGD, drawn with the site's private randomness.

Privacy amplification by subsampling holds only if nobody outside the site knows which rows were drawn,
so the sampler is seeded from the operating system's entropy, never from the run's public seed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import numpy as np

from clin_jepa.data.dataset import Batch, batch_from_indices
from clin_jepa.data.tokenize import SiteTensors


def poisson_batches(tensors: SiteTensors, rate: float,
                    rng: np.random.Generator | None = None) -> Iterator[Batch]:
    """Endless batches in which every row joins each batch independently with probability ``rate``
    (batches vary in size and may be empty, as the accountant assumes)."""
    if not 0 < rate <= 1:
        raise ValueError(f"Poisson sampling rate must be in (0, 1], got {rate}")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    n = len(tensors)
    while True:
        yield batch_from_indices(tensors, np.flatnonzero(rng.random(n) < rate))
