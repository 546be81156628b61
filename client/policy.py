"""The site's limits on what a run may ask of it, as a Flower mod around every ClientApp handler.

The rules are ``clin_jepa.site_policy``; here they meet Flower: the run config and node config come from
the ``Context``, a training message's own ``local-steps`` from its ConfigRecord, and a refusal becomes an
error reply (code ``REFUSED_CODE``) that names every limit, logged at the node too, before any data is
read or any step is trained.
"""

from __future__ import annotations

import os
from logging import WARNING

from flwr.app import Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import log

from clin_jepa.federation import FederationConfig
from clin_jepa.site_policy import REFUSED_CODE, allows_test_faults, refusal_text, refusals


def _round_local_steps(msg: Message) -> int | None:
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    config = msg.content.config_records.get("config")
    return None if config is None or "local-steps" not in config else int(config["local-steps"])


def refuse_outside_limits(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer with a refusal instead of running the handler when the run asks more than this site allows
    (its site config ``limits:``) or carries a test hook this node did not opt in to."""
    from client.site import get_site, site_config_path  # torch: loaded where a message is handled

    node_config = dict(context.node_config)
    fed = FederationConfig.from_run_config(context.run_config)
    site = get_site(site_config_path(node_config, fed)).cfg
    reasons = refusals(fed, site, allow_test_faults=allows_test_faults(node_config, os.environ),
                       round_local_steps=_round_local_steps(msg))
    if not reasons:
        return call_next(msg, context)
    text = refusal_text(site, reasons)
    log(WARNING, "%s", text)
    return Message(Error(code=REFUSED_CODE, reason=text), reply_to=msg)
