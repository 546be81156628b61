"""Curriculum schedules are pure functions of the step; phases tile the budget; hard sync fires once."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clin_jepa.curriculum import (
    HARD_SYNC,
    MODES,
    PHASES,
    CurriculumConfig,
    CurriculumSchedule,
    boundary_actions,
    lr_at,
    momentum_at,
    phase_at,
    phase_bounds,
)
from clin_jepa.errors import ConfigError


def test_curriculum_phases_in_order_with_declared_modules():
    cfg = CurriculumConfig(fractions=(0.1, 0.4, 0.2, 0.1, 0.2))
    names = [phase_at(s, 100, cfg).name for s in range(100)]
    assert [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n] == list(PHASES)
    assert names.count("warmup") == 10 and names.count("joint") == 40 and names.count("finalize") == 20
    warm, joint, final = phase_at(0, 100, cfg), phase_at(20, 100, cfg), phase_at(99, 100, cfg)
    assert warm.trainable == ("predictor",) and warm.ema_momentum == 1.0
    assert joint.trainable == ("encoder", "predictor") and joint.ema_momentum == cfg.base_momentum
    assert final.trainable == ("predictor",)
    assert phase_at(75, 100, cfg).ema_momentum == 0.0  # sync keeps Ē == E


def test_align_ramps_momentum_down_to_target():
    cfg = CurriculumConfig(fractions=(0.1, 0.4, 0.2, 0.1, 0.2), base_momentum=0.996, align_momentum=0.9)
    ms = [momentum_at(s, 1000, cfg) for s in range(500, 700)]
    assert ms[0] == pytest.approx(0.996) and ms[-1] == pytest.approx(0.9)
    assert all(a >= b for a, b in zip(ms, ms[1:], strict=False))


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_tiles_the_budget(mode):
    cfg = CurriculumConfig(mode=mode)
    for total in (1, 3, 7, 100, 1001):
        bounds = phase_bounds(total, cfg)
        assert bounds[0][1] == 0 and bounds[-1][2] == total
        assert all(b[2] == c[1] for b, c in zip(bounds, bounds[1:], strict=False))
        for s in range(total):
            p = phase_at(s, total, cfg)
            assert p.start <= s < p.end


def test_ablation_modes():
    naive = CurriculumConfig(mode="naive")
    assert {phase_at(s, 50, naive).trainable for s in range(50)} == {("encoder", "predictor")}
    assert {momentum_at(s, 50, naive) for s in range(50)} == {naive.base_momentum}
    no_ema = CurriculumConfig(mode="no-ema")
    assert {momentum_at(s, 50, no_ema) for s in range(50)} == {0.0}
    frozen = CurriculumConfig(mode="frozen-encoder", frozen_fraction=0.4)
    assert [phase_at(s, 50, frozen).trains_encoder for s in (0, 19, 20, 49)] == [True, True, False, False]
    assert boundary_actions(0, 50, 50, frozen) == (HARD_SYNC,)
    assert boundary_actions(0, 50, 50, naive) == ()


@settings(max_examples=60, deadline=None)
@given(total=st.integers(1, 400), cuts=st.lists(st.integers(0, 400), max_size=8),
       mode=st.sampled_from(["curriculum", "frozen-encoder"]),
       sync=st.sampled_from([0.0, 0.05]))
def test_hard_sync_fires_exactly_once_for_any_split(total, cuts, mode, sync):
    """Rounds, resumes and single steps all walk consecutive intervals: the sync happens once."""
    cfg = CurriculumConfig(mode=mode, fractions=(0.1, 0.45, 0.2, sync, 0.25 - sync))
    points = sorted({0, total, *(c for c in cuts if c < total)})
    sync_start = next(start for spec, start, _ in phase_bounds(total, cfg) if spec.name == "sync")
    # a budget too small to reach the sync phase never syncs; any budget >= 4 steps does
    expected = [HARD_SYNC] if sync_start < total else []
    assert total < 4 or expected
    fired = [a for lo, hi in zip(points, points[1:], strict=False)
             for a in boundary_actions(lo, hi, total, cfg)]
    assert fired == expected
    per_step = [a for s in range(total) for a in CurriculumSchedule(cfg, total).at(s).actions]
    assert per_step == expected


def test_lr_warmup_then_cosine():
    cfg = CurriculumConfig(lr=1e-3, min_lr=1e-5, lr_warmup=0.1, finalize_lr=0.0)
    lrs = [lr_at(s, 200, cfg) for s in range(200)]
    assert lrs[:20] == sorted(lrs[:20]) and lrs[19] == pytest.approx(1e-3)
    assert lrs[20:] == sorted(lrs[20:], reverse=True)
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)
    assert [lr_at(s, 200, cfg) for s in range(200)] == lrs  # pure: nothing to replay


def test_finalize_restarts_the_cosine_for_the_predictor_alone():
    plain = CurriculumConfig(lr=1e-3, min_lr=1e-5, finalize_lr=0.0)
    cfg = dataclasses.replace(plain, finalize_lr=0.5)
    start = next(s for s in range(200) if phase_at(s, 200, cfg).name == "finalize")
    assert start == 160 and not phase_at(start, 200, cfg).trains_encoder
    assert [lr_at(s, 200, cfg) for s in range(start)] == [lr_at(s, 200, plain) for s in range(start)]
    tail = [lr_at(s, 200, cfg) for s in range(start, 200)]
    assert tail[0] == pytest.approx(5e-4) and tail[0] > 4 * lr_at(start, 200, plain)
    assert tail == sorted(tail, reverse=True) and tail[-1] < 2e-5
    frozen = dataclasses.replace(cfg, mode="frozen-encoder")  # its P-only phase is a finalize phase too
    f0 = next(s for s in range(200) if phase_at(s, 200, frozen).name == "finalize")
    assert lr_at(f0, 200, frozen) == pytest.approx(5e-4)


def test_config_validation_and_roundtrip():
    cfg = CurriculumConfig(mode="no-ema", fractions=(0.2, 0.2, 0.2, 0.2, 0.2))
    assert CurriculumConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (-1, 25):
        with pytest.raises(ConfigError, match="finalize_rollout_steps"):
            CurriculumConfig(finalize_rollout_steps=bad)
    with pytest.raises(ConfigError, match="sum to 1"):
        CurriculumConfig(fractions=(0.5, 0.5, 0.5, 0.0, 0.0))
    with pytest.raises(ConfigError, match="mode"):
        CurriculumConfig(mode="greedy")
    with pytest.raises(ConfigError, match="budget"):
        phase_at(0, 0)
