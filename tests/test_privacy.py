"""Sample-level DP: clipped sums equal per-sample autograd, noise scale, Ē and frozen groups untouched,
ε across rounds and restarts equals an independent Opacus accountant, budget refusal, settings floor."""

import itertools
import json

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from clin_jepa.config import PrivacyConfig
from clin_jepa.curriculum import CurriculumConfig, FixedSchedule, phase_at
from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.errors import ConfigError
from clin_jepa.losses import LossConfig, jepa_loss, layer_normed_targets, model_terms
from clin_jepa.models import ClinJEPA, preset
from clin_jepa.models.testing import random_batch
from clin_jepa.privacy import (
    BudgetExhausted,
    DPSettings,
    PrivacyLedger,
    RunDPOverrides,
    plan_noise_multiplier,
    poisson_batches,
    private_train_steps,
    private_training,
    resolve_dp_settings,
)
from clin_jepa.train import build_optimizer, train_steps

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*[Ff]ull backward hook.*", "ignore:.*CPU autocast.*",
                                         "ignore:Optimal order is the largest alpha",
                                         "ignore:.*Secure RNG.*")]
CUR = CurriculumConfig(fractions=(0.2, 0.2, 0.2, 0.2, 0.2), lr=1e-3, lr_warmup=0.0)
WARMUP, JOINT = phase_at(0, 10, CUR), phase_at(3, 10, CUR)
HOURS = 12


def _model(seed=0, heads=False):
    torch.manual_seed(seed)
    return ClinJEPA(preset("tiny", n_concepts=6, n_treatments=2, max_hours=HOURS, horizon_heads=heads))


def _snap(module):
    return [p.detach().clone() for p in module.parameters()]


def _same(module, snap):
    return all(torch.equal(p, q) for p, q in zip(module.parameters(), snap, strict=True))


def _sgd(model):
    return torch.optim.SGD([p for m in (model.encoder, model.predictor) for p in m.parameters()], lr=1.0)


def _per_sample_loss(model, batch, loss_cfg, phase):
    with torch.no_grad():
        target = layer_normed_targets(model.target_encoder(batch))
    z = model.encoder(batch)
    loss, _ = jepa_loss(model.predictor, z, target, batch, loss_cfg, with_collapse=phase.trains_encoder,
                        reduction="none", **model_terms(model.cfg, batch))
    return loss


def _clipped_mean_by_autograd(model, batch, loss_cfg, phase, clip):
    """Reference DP-SGD direction without noise: one backward per sample, clip its joint norm, average."""
    params = [p for name in phase.trainable for p in getattr(model, name).parameters()]
    for g in ("encoder", "predictor"):
        getattr(model, g).requires_grad_(g in phase.trainable)
    total = [torch.zeros_like(p) for p in params]
    b = batch["mask"].shape[0]
    for i in range(b):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(_per_sample_loss(model, one, loss_cfg, phase).sum(), params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return [t / b for t in total]


@pytest.mark.parametrize("mode,rollout,phase,heads", [
    ("hooks", 2, JOINT, False), ("hooks", 2, WARMUP, False), ("functorch", 2, JOINT, False),
    ("ghost", 1, JOINT, False), ("hooks", 2, JOINT, True), ("ghost", 1, JOINT, True)])
def test_dp_step_is_the_mean_of_per_sample_clipped_gradients(mode, rollout, phase, heads):
    model, batch = _model(heads=heads), random_batch(preset("tiny", n_concepts=6, n_treatments=2), 5, HOURS)
    clip = 0.05
    # the reference sees the full context; ghost clipping allows one predictor pass per step, which
    # horizon heads keep with the look-ahead terms on
    loss_cfg = LossConfig(rollout_steps=rollout, context_mask=0.0, concept_dropout=0.0, value_jitter=0.0,
                          horizon_weight=float(mode != "ghost" or heads))
    expected = _clipped_mean_by_autograd(model, batch, loss_cfg, phase, clip)
    params = [p for name in phase.trainable for p in getattr(model, name).parameters()]
    before, target = [p.detach().clone() for p in params], _snap(model.target_encoder)
    frozen = [g for g in ("encoder", "predictor") if g not in phase.trainable]
    frozen_before = {g: _snap(getattr(model, g)) for g in frozen}
    with private_training(model, _sgd(model), phase, noise_multiplier=0.0, max_grad_norm=clip,
                          expected_batch_size=5, mode=mode) as (hook, dp_opt):
        train_steps(model, iter([batch]), dp_opt, FixedSchedule(phase, lr=1.0), 0, 1, privacy=hook,
                    loss_cfg=loss_cfg)
    moved = [b - p.detach() for b, p in zip(before, params, strict=True)]
    for m, e in zip(moved, expected, strict=True):
        torch.testing.assert_close(m, e, atol=2e-6, rtol=2e-3)
    assert _same(model.target_encoder, target)
    assert all(_same(getattr(model, g), s) for g, s in frozen_before.items())
    assert hook.steps == 1


def test_noise_scale_and_empty_batch_and_hooks_removed():
    """An empty Poisson batch still steps: the update is pure noise of std sigma * C / expected_B."""
    model = _model()
    cfg = preset("tiny", n_concepts=6, n_treatments=2)
    empty = {k: v[:0] for k, v in random_batch(cfg, 2, HOURS).items()}
    before, sigma, clip, eb = _snap(model.predictor), 2.0, 0.5, 4
    with private_training(model, _sgd(model), WARMUP, noise_multiplier=sigma, max_grad_norm=clip,
                          expected_batch_size=eb) as (hook, dp_opt):
        metrics, _ = train_steps(model, iter([empty]), dp_opt, FixedSchedule(WARMUP, lr=1.0), 0, 1,
                                 privacy=hook)
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.predictor.parameters(),
                                                                 strict=True)])
    assert hook.empty_batches == 1 and metrics["num_examples"] == 0
    assert abs(float(delta.std()) / (sigma * clip / eb) - 1) < 0.05
    assert abs(float(delta.mean())) < 0.05 * sigma * clip / eb
    # hooks are gone: a plain step afterwards leaves no per-sample state behind
    assert not hasattr(model.predictor, "autograd_grad_sample_hooks")
    opt = build_optimizer(model, CUR)
    train_steps(model, iter([random_batch(cfg, 3, HOURS)]), opt, FixedSchedule(WARMUP, lr=1e-3), 0, 1)
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def test_noise_differs_between_runs_with_the_same_seed():
    """Noise must not be reproducible from public seeds (the server could subtract it)."""
    outs = []
    for _ in range(2):
        model = _model(seed=0)
        cfg = preset("tiny", n_concepts=6, n_treatments=2)
        torch.manual_seed(0)
        with private_training(model, _sgd(model), WARMUP, noise_multiplier=1.0, max_grad_norm=1.0,
                              expected_batch_size=4) as (hook, dp_opt):
            train_steps(model, iter([random_batch(cfg, 4, HOURS)]), dp_opt, FixedSchedule(WARMUP, lr=1.0),
                        0, 1, privacy=hook)
        outs.append(_snap(model.predictor))
    assert not all(torch.equal(a, b) for a, b in zip(*outs, strict=True))


def test_per_sample_loss_does_not_depend_on_other_samples():
    """No batch statistics: each sample's loss (collapse term included) is the same alone or in a batch."""
    model = _model()
    batch = random_batch(preset("tiny", n_concepts=6, n_treatments=2), 4, HOURS, seed=3)
    with torch.no_grad():
        together = _per_sample_loss(model, batch, LossConfig(), JOINT)
        alone = torch.cat([_per_sample_loss(model, {k: v[i:i + 1] for k, v in batch.items()}, LossConfig(),
                                            JOINT) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def _tensors(n=40):
    rng = np.random.default_rng(0)
    cfg = preset("tiny", n_concepts=6, n_treatments=2)
    return SiteTensors(
        bins=rng.integers(0, cfg.n_bins + 1, (n, HOURS, 6)).astype(np.int16),
        treat=(rng.random((n, HOURS, 2)) < 0.1).astype(np.float32),
        time=rng.random((n, HOURS, 4)).astype(np.float32), mask=np.ones((n, HOURS), bool),
        labels=np.zeros((n, 8), np.float32), split=np.zeros(n, np.int8), subject_id=np.arange(n))


def test_poisson_batches_rate_and_private_draws():
    tensors = _tensors(200)
    sizes = [b["mask"].shape[0] for b in itertools.islice(poisson_batches(tensors, 0.1), 300)]
    assert abs(np.mean(sizes) - 20) < 1.5 and len(set(sizes)) > 3
    first = [next(poisson_batches(tensors, 0.1))["bins"] for _ in range(2)]
    assert first[0].shape != first[1].shape or not torch.equal(*first)


SETTINGS = DPSettings(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0)
K, BATCH = 3, 8


def _round(state_dir, rnd, run_id="run1", planned=3 * K, settings=SETTINGS, model=None, n=40):
    """One federated DP round as a site runs it: a fresh ledger object from disk every time."""
    tensors = _tensors(n)
    ledger = PrivacyLedger.open(state_dir, site="a", run_id=run_id, settings=settings, rate=BATCH / n,
                                planned_steps=planned)
    model = model or _model()
    opt = build_optimizer(model, CUR)
    return private_train_steps(model, opt, tensors, FixedSchedule(WARMUP, lr=1e-3), (rnd - 1) * K, K,
                               ledger=ledger, settings=settings, expected_batch_size=BATCH, rnd=rnd)


def test_epsilon_after_rounds_matches_an_independent_accountant(tmp_path):
    sigma = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=BATCH / 40, steps=3 * K)
    reference = RDPAccountant()
    reported = []
    for rnd in (1, 2, 3):
        metrics, _ = _round(tmp_path, rnd)
        for _ in range(K):
            reference.step(noise_multiplier=sigma, sample_rate=BATCH / 40)
        reported.append(metrics["dp-epsilon"])
        assert metrics["dp-epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
        assert metrics["dp-steps"] == rnd * K and metrics["num_examples"] == K * BATCH
        assert "loss" not in metrics  # losses are not covered by DP and never leave a DP site
    assert reported[0] < reported[1] < reported[2] <= 3.0
    assert reported[2] > 3.0 - 0.05  # the plan spends (almost) exactly the budget over the whole run
    ledger = json.loads((tmp_path / "privacy" / "run1.json").read_text())
    assert [r["round"] for r in ledger["rounds"]] == [1, 2, 3]
    assert ledger["history"] == [[pytest.approx(sigma), BATCH / 40, 3 * K]]


def test_restart_continues_epsilon_and_corrupt_ledger_refuses(tmp_path):
    first, _ = _round(tmp_path, 1)
    # a new process: nothing in memory, only the state dir
    reopened = PrivacyLedger.open(tmp_path, site="a", run_id="run1", settings=SETTINGS, rate=BATCH / 40,
                                  planned_steps=3 * K)
    assert reopened.epsilon() == pytest.approx(first["dp-epsilon"]) and reopened.steps == K
    second, _ = _round(tmp_path, 2)
    assert second["dp-epsilon"] > first["dp-epsilon"]
    assert second["dp-noise-multiplier"] == first["dp-noise-multiplier"]
    # another run on the same data gets no fresh budget: the site's lifetime ε composes both runs, and the
    # new run plans its noise for what run1 left of it (tests/test_privacy_lifetime.py), so it spends less
    # per round than run1 did; past the lifetime it is refused (tests/test_privacy_budget.py)
    other, _ = _round(tmp_path, 1, run_id="run2")
    assert other["dp-noise-multiplier"] > first["dp-noise-multiplier"]
    assert other["dp-epsilon"] < first["dp-epsilon"]  # this run's own share
    assert second["dp-epsilon"] < other["dp-epsilon-all-runs"] <= 3.0
    (tmp_path / "privacy" / "run1.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable.*reset"):
        _round(tmp_path, 3)


def test_budget_that_would_be_exceeded_stops_before_any_step(tmp_path):
    fixed = DPSettings(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, noise_multiplier=1.5)
    eps = []
    with pytest.raises(BudgetExhausted) as info:
        for rnd in range(1, 100):
            eps.append(_round(tmp_path, rnd, settings=fixed)[0]["dp-epsilon"])
    assert eps and eps[-1] <= 3.0
    model = _model()
    before = _snap(model.predictor)
    with pytest.raises(BudgetExhausted) as again:
        _round(tmp_path, len(eps) + 2, settings=fixed, model=model)
    assert _same(model.predictor, before)  # refused before training
    assert again.value.metrics["dp-budget-exhausted"] == 1
    assert again.value.metrics["dp-epsilon"] == pytest.approx(eps[-1])
    assert "privacy budget exhausted" in str(info.value)
    ledger = json.loads((tmp_path / "privacy" / "run1.json").read_text())
    assert sum(r["steps"] for r in ledger["rounds"]) == len(eps) * K


def test_ghost_with_multi_step_rollout_is_refused(tmp_path):
    settings = DPSettings(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, mode="ghost")
    with pytest.raises(ConfigError, match="parameter tying"):
        _round(tmp_path, 1, settings=settings)


def test_settings_site_block_is_a_floor_the_run_config_cannot_lower():
    site_on = PrivacyConfig(enabled=True, target_epsilon=2.0, delta=1e-6, max_grad_norm=1.0)
    site_off = PrivacyConfig()
    assert resolve_dp_settings(site_off, RunDPOverrides()) is None
    only_site = resolve_dp_settings(site_on, RunDPOverrides())
    assert (only_site.target_epsilon, only_site.delta) == (2.0, 1e-6)
    looser = resolve_dp_settings(site_on, RunDPOverrides(epsilon=8.0, delta=1e-3))
    assert (looser.target_epsilon, looser.delta) == (2.0, 1e-6)
    run_only = resolve_dp_settings(site_off, RunDPOverrides(epsilon=1.0, max_grad_norm=0.5, mode="ghost"))
    assert (run_only.target_epsilon, run_only.delta, run_only.max_grad_norm, run_only.mode) == \
        (1.0, 1e-5, 0.5, "ghost")
    with pytest.raises(ConfigError):
        DPSettings(target_epsilon=1.0, delta=1e-5, max_grad_norm=1.0, mode="fast")


def test_noise_plan_spends_the_budget_over_the_planned_steps():
    acc = RDPAccountant()
    sigma = plan_noise_multiplier(SETTINGS, 0.02, 500)
    acc.history = [(sigma, 0.02, 500)]
    assert 3.0 - 0.02 < acc.get_epsilon(1e-5) <= 3.0
    assert plan_noise_multiplier(SETTINGS, 0.02, 5000) > sigma  # more steps need more noise
    assert plan_noise_multiplier(DPSettings(3.0, 1e-5, 1.0, noise_multiplier=0.7), 0.02, 500) == 0.7
