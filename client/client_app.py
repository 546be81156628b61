"""Flower ClientApp: the statistics round, the training rounds and the evaluation rounds of a site
(handlers in ``client.rounds``).

Before any handler runs, ``client.errors`` makes sure only an error's type leaves the site (except for
configuration errors and privacy refusals), ``client.trust`` refuses a FAB whose code is not the site's
installed package (deployed nodes), and ``client.policy`` holds the run to this site's limits and
this node's opt-in to test hooks, and refuses it (an error reply naming each limit) when it asks for more.

This module imports Flower and the light configuration code only. The handlers' module (torch, the site's
data, training) is imported on a process's first message and then stays loaded: a simulation loads the
ClientApp in its driver process before it starts Ray, where nothing here ever runs a handler, and every
Ray worker imports the handlers once, not per message.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.errors import contain_errors
from client.policy import refuse_outside_limits
from client.trust import refuse_foreign_code

app = ClientApp(mods=[contain_errors, refuse_foreign_code, refuse_outside_limits])


@app.query("statistics")
def statistics(msg: Message, context: Context) -> Message:
    from client import rounds

    return rounds.statistics(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from client import rounds

    return rounds.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from client import rounds

    return rounds.evaluate(msg, context)
