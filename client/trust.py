"""A deployed node runs a run only when the FAB's code is the site's installed package
(``clin_jepa.code_trust``): another version or edited files get an error reply before any handler runs,
naming what differs. A simulated node (``partition-id``) runs the source tree it was started from and is
not checked."""

from __future__ import annotations

from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import log

from clin_jepa.code_trust import code_mismatch
from clin_jepa.site_policy import REFUSED_CODE

# The FAB's root: Flower installs the FAB and puts this directory first on sys.path.
APP_DIR = Path(__file__).resolve().parents[1]
_LOGGED: set[Path] = set()


def refuse_foreign_code(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if "site-config" not in context.node_config:
        return call_next(msg, context)
    check = code_mismatch(APP_DIR)
    if not check.reasons:
        if APP_DIR not in _LOGGED:  # once per process: the site's log records what it accepted
            _LOGGED.add(APP_DIR)
            log(INFO, "FAB %s: %d file(s) identical to this site's installed clin-jepa", APP_DIR,
                check.compared)
        return call_next(msg, context)
    text = ("this site runs only the clin-jepa code it installed, and the run's FAB differs: "
            + "; ".join(check.reasons) + ". Install the coordinator's release at the site after reviewing "
            "it, or ask the coordinator to run the site's version.")
    log(ERROR, "%s", text)
    return Message(Error(code=REFUSED_CODE, reason=text), reply_to=msg)
