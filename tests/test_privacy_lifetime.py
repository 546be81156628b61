"""The site's lifetime budget across runs: a new run plans its noise for what is LEFT of it, and two runs
reserving at the same moment in two processes cannot both spend the same remainder."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from opacus.accountants.utils import get_noise_multiplier
from test_privacy import BATCH, SETTINGS, K

from clin_jepa.privacy import BudgetExhausted, DPSettings, PrivacyLedger

RATE = BATCH / 40


def _open(state_dir, run_id, settings=SETTINGS, planned=3 * K) -> PrivacyLedger:
    return PrivacyLedger.open(state_dir, site="a", run_id=run_id, settings=settings, rate=RATE,
                              planned_steps=planned)


def test_a_new_run_plans_its_noise_for_the_remaining_lifetime_budget(tmp_path):
    first = _open(tmp_path, "run1")  # ε = 3 over 3 rounds; the site's lifetime budget is the same 3
    first.reserve(1, 2 * K)  # run1 stops after 2 of its 3 rounds' steps, having spent most of the budget
    left = 3.0 - first.lifetime_epsilon_spent()
    assert 0.2 < left < 1.5
    second = _open(tmp_path, "run2")
    # its own plan (ε = 3 over 3 rounds) would exceed the lifetime after the first round; the noise is
    # raised so that the whole run fits in what is left
    assert second.noise_multiplier > first.noise_multiplier * 1.2
    second.reserve(1, 3 * K)  # its whole plan fits (before the fix: BudgetExhausted)
    total = second.lifetime_epsilon_spent()
    assert 3.0 - 0.02 < total <= 3.0  # and it uses (almost) all of what was left, no more


def test_a_configured_noise_is_kept_and_the_ledger_still_stops_the_run(tmp_path):
    _open(tmp_path, "run1").reserve(1, 3 * K)
    fixed = DPSettings(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, noise_multiplier=5.0)
    second = _open(tmp_path, "run2", settings=fixed)
    assert second.noise_multiplier == 5.0  # not raised: the hospital chose it
    with pytest.raises(BudgetExhausted, match="lifetime"):
        second.reserve(1, K)


def _reserve_at_the_barrier(state_dir, run_id, settings, barrier, results) -> None:
    ledger = _open(state_dir, run_id, settings=settings, planned=K)
    barrier.wait()
    try:
        ledger.reserve(1, K)
        results.put((run_id, "spent"))
    except BudgetExhausted:
        results.put((run_id, "refused"))


@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_reserving_at_once_cannot_both_spend_the_remainder(tmp_path, attempt):
    # one round spends ε ≈ 0.8 of a lifetime of 1.0: one of the two runs fits, not both
    noise = get_noise_multiplier(target_epsilon=0.8, target_delta=1e-5, sample_rate=RATE, steps=K)
    settings = DPSettings(target_epsilon=1.0, delta=1e-5, max_grad_norm=1.0, noise_multiplier=noise)
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_reserve_at_the_barrier,
                         args=(tmp_path, f"run{i}", settings, barrier, results)) for i in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    outcome = sorted(results.get(timeout=5)[1] for _ in procs)
    assert outcome == ["refused", "spent"]
    spent = max(_open(tmp_path, f"run{i}", settings=settings, planned=K).lifetime_epsilon_spent()
                for i in (1, 2))
    assert 0.7 < spent <= 1.0
