"""Which sample-level DP a site trains under, and how much noise its whole run needs.

A site's own ``privacy:`` block (site config) and the coordinator's run config both may switch DP on. The
hospital's block is a floor the coordinator cannot lower: where both are on, the smaller ε and the smaller
δ win. The noise multiplier is planned once per run for the site's *planned total* number of DP steps
(every round × local steps), so spending the whole plan lands at (or just under) the target ε:
``opacus.accountants.utils.get_noise_multiplier`` on that step count, never on one round's.

The site's block also sets its *lifetime* budget (``DPSettings.lifetime``): ε over every run on its data,
enforced by the ledger whatever run id the coordinator sends, even when only the run config switched DP on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clin_jepa.config import PrivacyConfig
from clin_jepa.errors import ConfigError, PrivacyBudgetExceeded

# Opacus' per-sample gradient modes (clin_jepa.privacy.engine); here so that planning imports no torch.
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")

ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class DPSettings:
    """Sample-level DP of one site. ``noise_multiplier`` None = plan it from the budget."""

    target_epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float | None = None
    mode: str = "hooks"
    accountant: str = "rdp"
    # The site's budget over all runs (its config privacy.target_epsilon / delta); None = the run's target.
    lifetime_epsilon: float | None = None
    lifetime_delta: float | None = None

    def lifetime(self) -> tuple[float, float]:
        """(ε, δ) the site may spend over every run on its data."""
        return (self.lifetime_epsilon or self.target_epsilon, self.lifetime_delta or self.delta)

    def __post_init__(self) -> None:
        for name in ("target_epsilon", "lifetime_epsilon", "max_grad_norm", "noise_multiplier"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"DP {name.replace('_', ' ')} must be a finite number, got {value}")
        if self.lifetime_epsilon is not None and not self.lifetime_epsilon > 0:
            raise ConfigError(f"DP lifetime epsilon must be > 0, got {self.lifetime_epsilon}")
        if self.lifetime_delta is not None and not 0 < self.lifetime_delta < 1:
            raise ConfigError(f"DP lifetime delta must be in (0, 1), got {self.lifetime_delta}")
        if not self.target_epsilon > 0:
            raise ConfigError(f"DP target epsilon must be > 0, got {self.target_epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"DP delta must be in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"DP max grad norm must be > 0, got {self.max_grad_norm}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"DP noise multiplier must be > 0 or unset, got {self.noise_multiplier}")
        if self.mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(f"DP grad-sample mode {self.mode!r} is not one of {list(GRAD_SAMPLE_MODES)}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"DP accountant {self.accountant!r} is not one of {list(ACCOUNTANTS)}")


@dataclass(frozen=True)
class RunDPOverrides:
    """The coordinator's sample-level DP settings (run config ``dp-sample-*``). Zero means "not set";
    ``epsilon > 0`` switches DP on at every site."""

    epsilon: float = 0.0
    delta: float = 0.0
    max_grad_norm: float = 0.0
    noise_multiplier: float = 0.0
    mode: str = "hooks"
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        for key in ("epsilon", "max_grad_norm", "noise_multiplier"):
            if not 0 <= getattr(self, key) < math.inf:
                raise ConfigError(f"run config dp-sample-{key.replace('_', '-')}: must be >= 0 "
                                  f"(0 = not set), got {getattr(self, key)}")
        if not 0 <= self.delta < 1:
            raise ConfigError(f"run config dp-sample-delta: must be in [0, 1) (0 = the site's), "
                              f"got {self.delta}")
        if self.mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(f"run config dp-sample-mode: {self.mode!r} is not one of "
                              f"{list(GRAD_SAMPLE_MODES)}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"run config dp-sample-accountant: {self.accountant!r} is not one of "
                              f"{list(ACCOUNTANTS)}")


def resolve_dp_settings(site: PrivacyConfig, run: RunDPOverrides) -> DPSettings | None:
    """The DP a site trains under, or None when neither its config nor the run config asks for DP."""
    sources = []
    if site.enabled:
        sources.append((site.target_epsilon, site.delta))
    if run.epsilon > 0:
        sources.append((run.epsilon, run.delta if run.delta > 0 else site.delta))
    if not sources:
        return None
    noise = run.noise_multiplier if run.noise_multiplier > 0 else site.noise_multiplier
    return DPSettings(
        target_epsilon=min(e for e, _ in sources), delta=min(d for _, d in sources),
        max_grad_norm=run.max_grad_norm if run.max_grad_norm > 0 else site.max_grad_norm,
        noise_multiplier=noise, mode=run.mode, accountant=run.accountant,
        lifetime_epsilon=site.target_epsilon, lifetime_delta=site.delta)


def sample_rate(batch_size: int, n_patients: int) -> float:
    """Poisson sampling rate ``batch_size / N`` (capped at 1), N the site's training PATIENTS (the DP
    unit; ``sampling.poisson_batches`` draws patients, one stay each)."""
    if n_patients < 1:
        raise ConfigError("DP-SGD needs at least one training patient at the site")
    return min(1.0, batch_size / n_patients)


def plan_noise_multiplier(settings: DPSettings, rate: float, planned_steps: int) -> float:
    """The noise multiplier that spends ``settings.target_epsilon`` over ``planned_steps`` DP steps.

    A configured ``noise_multiplier`` is used as is (the ledger still stops the site at its budget).
    """
    if settings.noise_multiplier is not None:
        return float(settings.noise_multiplier)
    if planned_steps < 1:
        raise ConfigError(f"DP plan needs >= 1 planned step, got {planned_steps}")
    from opacus.accountants.utils import get_noise_multiplier  # lazily: see clin_jepa.privacy.engine

    try:
        return float(get_noise_multiplier(target_epsilon=settings.target_epsilon, target_delta=settings.delta,
                                          sample_rate=rate, steps=planned_steps,
                                          accountant=settings.accountant))
    except ValueError as exc:
        raise PrivacyBudgetExceeded(
            f"no noise multiplier reaches ε={settings.target_epsilon} at δ={settings.delta} over "
            f"{planned_steps} steps at sampling rate {rate:.4g} ({exc}); raise the budget or train fewer "
            f"steps") from None
