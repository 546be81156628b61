"""Sample-level differential privacy at a site: Opacus DP-SGD on the online modules only, a noise
multiplier planned for the whole run, and a ledger on disk so ε only grows across rounds and restarts.

Public API:

* :class:`DPSettings`, :class:`RunDPOverrides`, :func:`resolve_dp_settings` — which DP a site trains under;
* :func:`sample_rate`, :func:`plan_noise_multiplier` — the run's plan;
* :class:`PrivacyLedger`, :class:`BudgetExhausted`, :func:`compute_epsilon` — the accountant on disk
  (per run, checked against the site's lifetime budget over all runs);
* :func:`check_run_id`, :func:`pin_run_settings` — run ids that stay inside ``state_dir``, settings a
  resumed run must keep;
* :func:`private_training` (context manager, yields the ``PrivacyHook`` and the DP optimizer),
  :func:`poisson_batches`, :func:`private_train_steps` (all of the above for one round).
"""

from clin_jepa.privacy.engine import GRAD_SAMPLE_MODES, OpacusHook, private_training
from clin_jepa.privacy.ledger import (
    BudgetExhausted,
    PrivacyLedger,
    compute_epsilon,
    ledger_path,
)
from clin_jepa.privacy.planning import (
    ACCOUNTANTS,
    DPSettings,
    RunDPOverrides,
    plan_noise_multiplier,
    resolve_dp_settings,
    sample_rate,
)
from clin_jepa.privacy.round import PUBLIC_METRICS, private_train_steps
from clin_jepa.privacy.runs import check_run_id, pin_run_settings, run_path
from clin_jepa.privacy.sampling import poisson_batches

__all__ = [
    "ACCOUNTANTS", "GRAD_SAMPLE_MODES", "PUBLIC_METRICS", "BudgetExhausted", "DPSettings", "OpacusHook",
    "PrivacyLedger", "RunDPOverrides", "check_run_id", "compute_epsilon", "ledger_path",
    "pin_run_settings", "plan_noise_multiplier", "poisson_batches", "private_train_steps",
    "private_training", "resolve_dp_settings", "run_path", "sample_rate",
]
