"""The synthetic-data checks regenerate hospitals in place: the tensors must be those of the new data
alone, exactly as from a clean folder (no shard, split or cached tensor of the old data read through)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clin_jepa.data.synth.history_check import fresh_sites


def test_fresh_sites_regenerated_in_place_match_a_clean_folder(tmp_path: Path) -> None:
    fresh_sites(tmp_path / "reused", 2, 40, seed=0)
    cfgs, disc, reused = fresh_sites(tmp_path / "reused", 2, 40, seed=1)
    _, disc_clean, clean = fresh_sites(tmp_path / "clean", 2, 40, seed=1)
    assert [c.site for c in cfgs] == ["hospital_a", "hospital_b"]
    assert disc.fingerprint() == disc_clean.fingerprint()
    for a, b in zip(reused, clean, strict=True):
        assert len(a) > 0 and a.hours == 72
        np.testing.assert_array_equal(a.bins, b.bins)
        np.testing.assert_array_equal(a.subject_id, b.subject_id)
