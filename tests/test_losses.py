"""The JEPA loss: rollout semantics, masking, per-sample reduction, anti-collapse hinge."""

import pytest
import torch

from clin_jepa.errors import ConfigError
from clin_jepa.losses import (
    LossConfig,
    collapse_penalty,
    jepa_loss,
    layer_normed_targets,
    observation_loss,
    rollout_losses,
)


def _batch(b, t, lengths=None):
    lengths = torch.full((b,), t) if lengths is None else torch.tensor(lengths)
    return {"mask": torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1), "treat": torch.zeros(b, t, 1)}


def test_oracle_predictor_has_zero_loss_at_every_rollout_step():
    target = layer_normed_targets(torch.randn(3, 10, 8))
    oracle = lambda seq, batch: torch.cat([target[:, 1:], target[:, -1:]], dim=1)  # noqa: E731
    losses = rollout_losses(oracle, target.clone(), target, _batch(3, 10), k=3)
    assert len(losses) == 3 and all(float(x.abs().max()) == 0.0 for x in losses)


def test_rollout_step_j_is_a_j_step_forecast():
    """With an identity predictor, step j compares hour t+1 with hour t+1-j (persistence over j hours)."""
    z = torch.randn(2, 9, 4)
    losses = rollout_losses(lambda seq, batch: seq, z, z, _batch(2, 9), k=3)
    for j, got in enumerate(losses, start=1):
        rows = range(j - 1, 8)
        want = torch.stack([(z[:, t + 1] - z[:, t + 1 - j]).abs().mean(-1) for t in rows], 1).mean(1)
        torch.testing.assert_close(got, want)


def test_hours_outside_the_stay_do_not_count():
    target = torch.randn(2, 8, 4)
    z = torch.randn(2, 8, 4)
    pred = lambda seq, batch: seq * 0.5  # noqa: E731
    batch = _batch(2, 8, lengths=[5, 8])
    before = rollout_losses(pred, z, target, batch, k=2)
    target2, z2 = target.clone(), z.clone()
    target2[0, 5:] += 100.0
    z2[0, 5:] -= 100.0
    after = rollout_losses(pred, z2, target2, batch, k=2)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def test_reduction_none_is_per_sample_and_mean_matches():
    z, target = torch.randn(4, 6, 8), layer_normed_targets(torch.randn(4, 6, 8))
    pred = lambda seq, batch: seq.flip(-1)  # noqa: E731
    cfg = LossConfig(collapse_floor=5.0, collapse_weight=1.0)
    per, parts = jepa_loss(pred, z, target, _batch(4, 6), cfg, reduction="none")
    mean, _ = jepa_loss(pred, z, target, _batch(4, 6), cfg)
    assert per.shape == (4,)
    torch.testing.assert_close(per.mean(), mean)
    one, _ = jepa_loss(pred, z[1:2], target[1:2], _batch(1, 6), cfg)
    torch.testing.assert_close(one, per[1])  # no sample's loss depends on another sample
    assert set(parts) == {"loss", "loss_step1", "loss_step2", "collapse"}
    without, _ = jepa_loss(pred, z, target, _batch(4, 6), cfg, with_collapse=False)
    assert float(without) < float(mean)
    with pytest.raises(ValueError):
        jepa_loss(pred, z, target, _batch(4, 6), cfg, reduction="sum")


def test_collapse_hinge():
    floor = 0.5
    constant = torch.randn(2, 1, 16).expand(2, 12, 16).contiguous()
    varied = torch.randn(2, 12, 16) * 3
    mask = _batch(2, 12)["mask"]
    assert torch.allclose(collapse_penalty(constant, mask, floor), torch.full((2,), floor), atol=0.02)
    assert float(collapse_penalty(varied, mask, floor).max()) < 0.05
    # constant inside the stay, wild afterwards: still collapsed
    mixed = constant.clone()
    mixed[:, 6:] = torch.randn(2, 6, 16) * 10
    short = _batch(2, 12, lengths=[6, 6])["mask"]
    assert torch.allclose(collapse_penalty(mixed, short, floor), torch.full((2,), floor), atol=0.02)
    # and the hinge pushes a collapsed encoder's outputs apart
    z = (constant + 0.01 * torch.randn_like(constant)).requires_grad_()
    collapse_penalty(z, mask, floor).sum().backward()
    before = float(collapse_penalty(z.detach(), mask, floor).mean())
    assert float(collapse_penalty((z - 10.0 * z.grad).detach(), mask, floor).mean()) < before


def test_observation_loss_is_the_mean_cross_entropy_of_the_measured_future_cells():
    """Against a cell-by-cell reference: from hour t, horizon h scores concept c's bin at t+h when it was
    measured there (bin > 0) and both hours lie in the stay; per sample, the mean over those cells."""
    b, t, n_h, c, n_bins = 3, 7, 3, 4, 5
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(b, t, n_h, c, n_bins, generator=gen)
    bins = torch.randint(0, n_bins + 1, (b, t, c), generator=gen)
    mask = _batch(b, t, lengths=[7, 5, 1])["mask"]
    got = observation_loss(lambda z, batch, observe: logits, torch.zeros(b, t, 2), bins, mask)
    for i in range(b):
        cells = [-torch.log_softmax(logits[i, s, h - 1, k], -1)[bins[i, s + h, k] - 1]
                 for s in range(t) for h in range(1, n_h + 1) for k in range(c)
                 if s + h < t and mask[i, s] and mask[i, s + h] and bins[i, s + h, k] > 0]
        want = torch.stack(cells).mean() if cells else torch.tensor(0.0)
        torch.testing.assert_close(got[i], want)
    assert float(got[2]) == 0.0  # a one-hour stay has no future cell to score


@pytest.mark.parametrize("field", ["context_mask", "concept_dropout", "value_jitter"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_context_corruption_probabilities_outside_0_1_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"loss.{field}"):
        LossConfig(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("jitter_bins", 0), ("concept_block_hours", -1)])
def test_a_jitter_step_below_one_bin_or_a_negative_block_is_refused(field, value):
    with pytest.raises(ConfigError, match=f"loss.{field}"):
        LossConfig(**{field: value})


@pytest.mark.parametrize("field", ["rollout_weight", "collapse_weight", "horizon_weight", "obs_weight"])
def test_negative_loss_weights_are_refused(field):
    with pytest.raises(ConfigError, match="weights"):
        LossConfig(**{field: -0.1})


@pytest.mark.parametrize(("section", "field", "value"), [
    ("loss", "context_mask", "0.4"), ("loss", "concept_block_hours", 6.5), ("loss", "jepa_to_encoder", 1),
    ("loss", "obs_weight", True), ("curriculum", "lr", "fast"), ("curriculum", "mode", 3),
    ("model", "enc_layers", 1.5)])
def test_config_values_of_the_wrong_kind_are_refused_by_key(section, field, value):
    from clin_jepa.curriculum import CurriculumConfig
    from clin_jepa.models.config import ModelConfig

    config = {"loss": LossConfig, "curriculum": CurriculumConfig, "model": ModelConfig}[section]
    with pytest.raises(ConfigError, match=f"^{section}.{field}: "):
        config(**{field: value})


def test_numpy_numbers_and_ints_for_floats_are_accepted_even_without_string_annotations():
    import dataclasses

    import numpy as np

    from clin_jepa.errors import check_field_types

    @dataclasses.dataclass
    class Plain:  # this module's annotations are not strings: the check must still read the types
        hours: int
        rate: float

    check_field_types(Plain(np.int64(3), 1), "plain")
    assert LossConfig(value_jitter=np.float32(0.2), rollout_steps=np.int64(3)).rollout_steps == 3
    with pytest.raises(ConfigError, match="plain.hours: "):
        check_field_types(Plain(2.5, 1.0), "plain")
