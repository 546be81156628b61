"""A deployed node runs a run only when the FAB's code is the site's installed package
(``clin_jepa.code_trust``): another version or edited files get an error reply before any handler runs,
naming what differs. A simulated node (``partition-id``) runs the source tree it was started from and is
not checked."""

from __future__ import annotations

from logging import ERROR
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import log

from clin_jepa.code_trust import code_mismatch
from clin_jepa.site_policy import REFUSED_CODE

# The FAB's root: Flower installs the FAB and puts this directory first on sys.path.
APP_DIR = Path(__file__).resolve().parents[1]


def refuse_foreign_code(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if "site-config" not in context.node_config:
        return call_next(msg, context)
    reasons = code_mismatch(APP_DIR)
    if not reasons:
        return call_next(msg, context)
    text = ("this site runs only the clin-jepa code it installed, and the run's FAB differs: "
            + "; ".join(reasons) + ". Install the coordinator's release at the site after reviewing it, or "
            "ask the coordinator to run the site's version.")
    log(ERROR, "%s", text)
    return Message(Error(code=REFUSED_CODE, reason=text), reply_to=msg)
