"""train_steps: each phase moves exactly its modules, hard sync, EMA modes, exact resume, DP seam."""

import itertools

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from clin_jepa.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from clin_jepa.curriculum import CurriculumConfig, CurriculumSchedule, FixedSchedule, phase_at
from clin_jepa.models import ClinJEPA, preset
from clin_jepa.models.testing import random_batch
from clin_jepa.train import build_optimizer, train_steps

FRACTIONS = (0.2, 0.2, 0.2, 0.2, 0.2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(mode="curriculum", seed=0):
    torch.manual_seed(seed)
    model = ClinJEPA(preset("tiny", n_concepts=6, n_treatments=2))
    cfg = CurriculumConfig(mode=mode, fractions=FRACTIONS, lr=3e-3, lr_warmup=0.0)
    return model, cfg, build_optimizer(model, cfg)


def _batches(cfg, start=0):
    return (random_batch(cfg, 6, 12, seed=s) for s in itertools.count(start))


def _snap(module):
    return [p.detach().clone() for p in module.parameters()]


def _same(module, snap):
    return all(torch.equal(p, q) for p, q in zip(module.parameters(), snap, strict=True))


def _equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_each_phase_moves_exactly_its_modules():
    model, cfg, opt = _setup()
    total = 20
    schedule, batches = CurriculumSchedule(cfg, total), _batches(model.cfg)
    seen = set()
    for step in range(total):
        phase = phase_at(step, total, cfg)
        seen.add(phase.name)
        e, t, p = _snap(model.encoder), _snap(model.target_encoder), _snap(model.predictor)
        train_steps(model, batches, opt, schedule, step, 1)
        assert not _same(model.predictor, p), phase.name  # every phase trains P
        if phase.name in ("warmup", "finalize"):
            assert _same(model.encoder, e) and _same(model.target_encoder, t), phase.name
            assert _equal(model.encoder, model.target_encoder), phase.name  # Ē = E
        elif phase.name in ("joint", "align"):
            assert not _same(model.encoder, e)
            assert not _same(model.target_encoder, t)  # Ē follows by EMA ...
            assert not _equal(model.encoder, model.target_encoder)  # ... without reaching E
        else:  # sync: hard copy at entry, then Ē = E after every step
            assert not _same(model.encoder, e)
            assert _equal(model.encoder, model.target_encoder)
    assert seen == {"warmup", "joint", "align", "sync", "finalize"}
    assert all(not p.requires_grad for p in model.target_encoder.parameters())


@pytest.mark.parametrize("mode", ["naive", "no-ema"])
def test_ablation_modes_ema(mode):
    model, cfg, opt = _setup(mode)
    batches = _batches(model.cfg)
    for step in range(3):
        train_steps(model, batches, opt, CurriculumSchedule(cfg, 10), step, 1)
        assert _equal(model.encoder, model.target_encoder) == (mode == "no-ema")


def test_frozen_encoder_mode_freezes_encoder_after_pretraining():
    model, cfg, opt = _setup("frozen-encoder")
    schedule, batches = CurriculumSchedule(cfg, 8), _batches(model.cfg)
    train_steps(model, batches, opt, schedule, 0, 4)
    assert not _equal(model.encoder, model.target_encoder)
    e = _snap(model.encoder)
    train_steps(model, batches, opt, schedule, 4, 4)
    assert _same(model.encoder, e) and _equal(model.encoder, model.target_encoder)


def test_resume_through_checkpoint_matches_straight_run(tmp_path):
    total = 20  # the split at step 9 lies before the sync phase (starts at 12)
    straight, cfg, opt = _setup()
    m1, _ = train_steps(straight, _batches(straight.cfg), opt, CurriculumSchedule(cfg, total), 0, total)

    first, _, opt_a = _setup()
    _, step = train_steps(first, _batches(first.cfg), opt_a, CurriculumSchedule(cfg, total), 0, 9)
    save_checkpoint(tmp_path / "ckpt.pt", Checkpoint.from_model(first, curriculum=cfg.to_dict(), step=step,
                                                                 optimizer=opt_a.state_dict()))
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    resumed = ckpt.build_model()
    cfg_b = CurriculumConfig.from_dict(ckpt.curriculum)
    opt_b = build_optimizer(resumed, cfg_b)
    opt_b.load_state_dict(ckpt.optimizer)
    _, step = train_steps(resumed, _batches(resumed.cfg, ckpt.step), opt_b, CurriculumSchedule(cfg_b, total),
                          ckpt.step, total - ckpt.step)
    assert step == total
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert _equal(resumed.encoder, resumed.target_encoder)  # finalization starts from the synced Ē


def test_metrics_and_monitors_are_reported():
    model, cfg, opt = _setup()
    logs = []
    metrics, step = train_steps(model, _batches(model.cfg), opt, CurriculumSchedule(cfg, 10), 2, 4,
                                log_every=2, on_log=lambda s, d: logs.append((s, d)))
    assert step == 6 and metrics["num_examples"] == 24
    assert {"loss", "loss_step1", "loss_step2", "collapse", "lr", "momentum"} <= set(metrics)
    assert [s for s, _ in logs] == [3, 5]
    for _, d in logs:
        assert {"emb_std_mean", "emb_std_min", "eff_rank", "drift"} <= set(d)
        assert 1.0 <= d["eff_rank"] <= model.cfg.d_enc and d["drift"] >= 0


class OpacusHook:
    """A minimal real DP-SGD hook (clipping only, no noise) to exercise the seam with Opacus itself."""

    def __init__(self):
        self.steps = []

    def before_step(self, step):
        pass

    def backward(self, per_sample_loss):
        per_sample_loss.mean().backward()

    def after_step(self, step):
        self.steps.append(step)


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
def test_privacy_seam_with_wrapped_predictor_and_dp_optimizer():
    """Warmup trains P only: wrap P with Opacus, clip per-sample gradients, train a few steps."""
    model, cfg, _ = _setup()
    model.predictor = GradSampleModule(model.predictor)
    params = list(model.predictor.parameters())
    opt = DPOptimizer(torch.optim.SGD(params, lr=0.05), noise_multiplier=0.0, max_grad_norm=0.01,
                      expected_batch_size=6)
    hook, before = OpacusHook(), _snap(model.predictor)
    warmup = phase_at(0, 10, cfg)
    enc = _snap(model.encoder)
    metrics, step = train_steps(model, _batches(model.cfg), opt, FixedSchedule(warmup, lr=0.05), 40, 3,
                                privacy=hook)
    assert hook.steps == [40, 41, 42] and step == 43
    assert _same(model.encoder, enc) and not _same(model.predictor, before)
    moved = sum(float((p.detach() - q).pow(2).sum())
                for p, q in zip(model.predictor.parameters(), before, strict=True))
    # clipped to 0.01 per sample and averaged: each step moves at most lr * 0.01
    assert moved ** 0.5 <= 3 * 0.05 * 0.01 + 1e-6


def test_the_finalize_phase_trains_the_longer_rollout_and_only_it():
    model, cfg, opt = _setup()
    cfg = CurriculumConfig.from_dict({**cfg.to_dict(), "finalize_rollout_steps": 5})
    logs = []
    train_steps(model, _batches(model.cfg), opt, CurriculumSchedule(cfg, 10), 0, 10, log_every=1,
                on_log=lambda s, d: logs.append((phase_at(s, 10, cfg).name, d)))
    # the loss's own k (2) in every phase but finalize, where each of the 5 chained steps is scored
    assert {name for name, d in logs if "loss_step5" in d} == {"finalize"}
    assert all("loss_step2" in d and "loss_step3" not in d for name, d in logs if name != "finalize")
    last = [d for name, d in logs if name == "finalize"][-1]
    assert all(last[f"loss_step{j}"] > 0 for j in range(1, 6))
    off = CurriculumConfig.from_dict({**cfg.to_dict(), "finalize_rollout_steps": 0})
    assert CurriculumSchedule(off, 10).at(9).rollout_steps == 0  # 0 = the loss's rollout_steps


@pytest.mark.parametrize("corruption", ["value_jitter", "concept_dropout"])
@pytest.mark.parametrize("first_phase", [True, False])
def test_context_corruption_changes_training_only_in_phases_that_train_the_encoder(first_phase, corruption):
    """Warmup (step 0 of 20) trains P alone on E's uncorrupted context; joint (step 5) trains E on the
    jittered one or the one with concepts hidden: the same step with and without it must agree in the
    first and differ in the second."""
    from clin_jepa.losses import LossConfig

    step = 0 if first_phase else 5
    runs = []
    for prob in (0.0, 0.5):
        model, cfg, opt = _setup()
        loss_cfg = LossConfig(**{"context_mask": 0.0, "value_jitter": 0.0, "concept_dropout": 0.0,
                                 corruption: prob})
        train_steps(model, _batches(model.cfg, step), opt, CurriculumSchedule(cfg, 20), step, 1,
                    loss_cfg=loss_cfg)
        runs.append(model)
    assert _equal(runs[0].predictor, runs[1].predictor) == first_phase
