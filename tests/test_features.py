"""The shared hourly inputs: carried-forward values, measured flags, hours since, and hiding values."""

import numpy as np
import torch

from clin_jepa.data.features import (
    SINCE_CAP_H,
    carry_forward,
    hide_concepts,
    hide_observations,
    jitter_observations,
    sequence_inputs,
)


def test_carry_forward_holds_the_last_value_and_counts_hours():
    bins = torch.zeros(1, 6, 2, dtype=torch.long)
    bins[0, 1, 0], bins[0, 4, 0] = 3, 2
    locf, measured, since = carry_forward(bins)
    assert locf[0, :, 0].tolist() == [0, 3, 3, 3, 2, 2]
    assert locf[0, :, 1].tolist() == [0] * 6  # never measured: bin 0
    assert measured[0, :, 0].tolist() == [0, 1, 0, 0, 1, 0]
    assert since[0, 1, 0] == 0 and since[0, 4, 0] == 0
    assert 0 < since[0, 2, 0] < since[0, 3, 0] < 1
    assert torch.all(since[0, :, 1] == 1) and since[0, 0, 0] == 1


def test_carry_forward_caps_long_gaps():
    bins = torch.zeros(1, 80, 1, dtype=torch.long)
    bins[0, 0, 0] = 1
    since = carry_forward(bins)[2][0, :, 0]
    assert since[int(SINCE_CAP_H)] == 1 and since[79] == 1 and since[int(SINCE_CAP_H) - 1] < 1


def test_features_are_causal():
    rng = np.random.default_rng(0)
    bins = torch.as_tensor(rng.integers(0, 4, size=(5, 30, 3)))
    changed = bins.clone()
    changed[:, 20:] = torch.as_tensor(rng.integers(0, 4, size=(5, 10, 3)))
    for a, b in zip(carry_forward(bins), carry_forward(changed), strict=True):
        assert torch.equal(a[:, :20], b[:, :20])
        assert not torch.equal(a[:, 20:], b[:, 20:])


def test_hidden_values_carry_the_previous_one_forward():
    bins = torch.tensor([[[2], [3], [0]]])
    gen = torch.Generator().manual_seed(0)
    hidden = hide_observations(bins.repeat(200, 1, 1), 0.4, gen)
    dropped = hidden[:, 1, 0] == 0
    assert 0.25 < dropped.float().mean() < 0.55
    locf, measured, _ = carry_forward(hidden)
    kept_first = hidden[:, 0, 0] == 2
    assert torch.all(locf[dropped & kept_first, 1, 0] == 2) and torch.all(measured[dropped, 1, 0] == 0)
    assert torch.equal(hide_observations(bins, 0.0), bins)


def test_jittered_values_move_one_bin_within_range_and_gaps_stay_gaps():
    bins = torch.tensor([[[1], [5], [10], [0]]]).repeat(400, 1, 1)
    gen = torch.Generator().manual_seed(0)
    moved = jitter_observations(bins, 0.5, 10, gen)
    assert torch.all(moved[:, 3] == 0)  # an unmeasured hour never gains a value
    assert torch.all((moved - bins).abs() <= 1) and moved[:, :3].min() >= 1 and moved.max() <= 10
    middle = moved[:, 1, 0]
    assert 0.2 < (middle == 4).float().mean() < 0.3 and 0.2 < (middle == 6).float().mean() < 0.3
    assert set(moved[:, 0, 0].tolist()) == {1, 2} and set(moved[:, 2, 0].tolist()) == {9, 10}
    assert torch.equal(jitter_observations(bins, 0.0, 10), bins)


def test_jitter_of_up_to_two_bins_takes_both_step_sizes_equally_often():
    bins = torch.full((2000, 1, 1), 5)
    moved = jitter_observations(bins, 0.5, 10, torch.Generator().manual_seed(0), max_step=2)[:, 0, 0]
    steps = (moved - 5).abs()
    assert set(steps.tolist()) == {0, 1, 2}
    assert 0.2 < (steps == 1).float().mean() < 0.3 and 0.2 < (steps == 2).float().mean() < 0.3
    edge = jitter_observations(torch.full((500, 1, 1), 1), 0.9, 10, torch.Generator().manual_seed(1), 2)
    assert edge.min() >= 1 and set(edge.flatten().tolist()) <= {1, 2, 3}


def test_hidden_concepts_are_hidden_for_the_whole_stay_and_nothing_else_is():
    bins = torch.randint(1, 11, (300, 48, 16))
    out = hide_concepts(bins, 0.25, torch.Generator().manual_seed(0))
    gone = (out == 0).all(dim=1)  # (stay, concept) hidden at every hour
    assert torch.equal((out == 0), gone.unsqueeze(1).expand_as(out))  # no value hidden on its own
    assert 0.2 < gone.float().mean() < 0.3
    assert torch.equal(out[~gone.unsqueeze(1).expand_as(out)], bins[~gone.unsqueeze(1).expand_as(out)])
    assert torch.equal(hide_concepts(bins, 0.0), bins)


def test_hidden_concept_blocks_cover_whole_blocks_and_differ_between_blocks():
    bins = torch.randint(1, 11, (300, 50, 16))  # 50 hours: the last 6-hour block is cut to 2
    out = hide_concepts(bins, 0.25, torch.Generator().manual_seed(0), block_hours=6)
    gone = out == 0
    blocks = [gone[:, s:s + 6] for s in range(0, 50, 6)]
    for b in blocks:  # a block is hidden at all of its hours or at none
        assert torch.equal(b.all(dim=1), b.any(dim=1))
    per_block = torch.stack([b.all(dim=1) for b in blocks], dim=1)  # (stay, block, concept)
    assert 0.2 < per_block.float().mean() < 0.3
    assert (per_block.any(dim=1) & ~per_block.all(dim=1)).float().mean() > 0.5  # stale, then back
    assert torch.equal(out[~gone], bins[~gone])
    one_block = hide_concepts(bins, 0.25, torch.Generator().manual_seed(0), block_hours=50)
    assert torch.equal(one_block, hide_concepts(bins, 0.25, torch.Generator().manual_seed(0)))  # = whole stay


def test_sequence_inputs_shape():
    bins = np.zeros((2, 72, 3), np.int16)
    x = sequence_inputs(bins, np.zeros((2, 72, 2), np.float32), np.zeros((2, 72, 4), np.float32), 4, 24)
    assert x.shape == (2, 24, 4 * 3 + 2 + 3)  # level, seen, measured, since per concept; treatments; time
