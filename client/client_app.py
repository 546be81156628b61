"""Flower ClientApp: the statistics round and the training rounds of a site (handlers in ``client.rounds``).

* ``query.statistics`` — this site's mergeable value histograms and code counts (arrays only, never rows)
  and its name; with ``what="identify"`` only the name;
* ``train`` — one round of local training on the groups the server sent; the reply is one ArrayRecord
  with exactly the trained groups (their update in float16 by default, ``transport-dtype``) and one
  MetricRecord.

Before either handler runs, ``client.policy`` holds the run to this site's limits and this node's opt-in
to test hooks, and refuses it (an error reply naming each limit) when it asks for more.

This module imports Flower and the light configuration code only. The handlers' module (torch, the site's
data, training) is imported on a process's first message and then stays loaded: a simulation loads the
ClientApp in its driver process before it starts Ray, where nothing here ever runs a handler, and every
Ray worker imports the handlers once, not per message.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.policy import refuse_outside_limits

app = ClientApp(mods=[refuse_outside_limits])


@app.query("statistics")
def statistics(msg: Message, context: Context) -> Message:
    from client import rounds

    return rounds.statistics(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from client import rounds

    return rounds.train(msg, context)
