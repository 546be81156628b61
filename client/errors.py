"""What a failing ClientApp tells the coordinator: the kind of failure, never its text.

Flower turns an exception raised in a handler into an error reply whose reason is the exception's text,
and a data error's text can name patients (``subjects [1042, 1077] have no valid split``, rows with
subject id, time, code and value). This mod, outermost around every handler, keeps the full text in
the SuperNode's own log and lets only the exception's type and the handler's name leave. Errors about
the run's own configuration (``ConfigError``: run config, run id, limits, the site's config file) and
privacy refusals describe the run, not patients, and leave unchanged so the coordinator can act on them.
"""

from __future__ import annotations

from logging import ERROR

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import log

from clin_jepa.errors import ConfigError, PrivacyBudgetExceeded


class SiteFailure(RuntimeError):
    """A handler failed; the details stay at the site."""


class InjectedFault(RuntimeError):
    """The ``inject-faults`` test hook's failure: its text names only the site and the round."""


def contain_errors(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    try:
        return call_next(msg, context)
    except (ConfigError, PrivacyBudgetExceeded, InjectedFault):
        raise
    except Exception as exc:  # noqa: BLE001 - every other failure may carry data in its text
        log(ERROR, "ClientApp %s handler failed (kept at this site):", msg.metadata.message_type,
            exc_info=exc)
        raise SiteFailure(f"the site's {msg.metadata.message_type} handler failed with "
                          f"{type(exc).__name__}; the details may describe patient data and stay in the "
                          "site's SuperNode log") from None
