"""A stand-in for the transport only: a Flower ``Grid`` that hands back prepared, real Flower Messages as a
SuperLink would after the round-timeout, and lists the nodes a test says are connected. Everything the
server does with the messages is the real code."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


def as_serverapp_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower's ServerApp process sets before ``main`` runs (``run_serverapp``); Messages read it."""
    for key, value in {"_task_id": 1, "_run_id": 1, "_node_id": 0}.items():
        monkeypatch.setattr(TaskIdentity, key, value)


class ReplyGrid(Grid):
    """``replies``: node -> its reply to whatever it is sent; ``silent`` nodes are connected but never
    answer; a node in neither is not connected."""

    def __init__(self, replies: dict[int, Message] | None = None, silent: Iterable[int] = ()) -> None:
        self.replies, self.silent = dict(replies or {}), set(silent)
        self.sent: list[Message] = []

    def set_run(self, run: object) -> None:
        raise NotImplementedError

    @property
    def run(self) -> object:
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return sorted({*self.replies, *self.silent})

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self.sent += messages
        return [self.replies[n] for n in (m.metadata.dst_node_id for m in messages) if n in self.replies]
