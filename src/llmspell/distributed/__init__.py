"""Distributed hooks: the distributed hook context, remote hooks and hook servers.

The layer above the two engines and the transport that lets hooks govern work spread over
processes and machines (the ``nats`` extra):

* :class:`DistributedHookContext` (:mod:`~llmspell.distributed.context`): correlation
  id, run id, W3C trace, lineage, origin, hop count and limit, deadline, carried in
  message headers;
* :class:`Signer` / :class:`SharedKey` (:mod:`~llmspell.distributed.signing`): HMAC-SHA256
  over context headers and payload, with a timestamp window and replay protection;
* :class:`RemoteHook` / :class:`HookClient` (:mod:`~llmspell.distributed.remote`): a hook
  in a local chain whose body runs in a hook server, over NATS request/reply;
* :class:`HookServer` (:mod:`~llmspell.distributed.server`) and :func:`load_policy`
  (:mod:`~llmspell.distributed.policy`): serving hooks, in a queue group, from Python
  (``llmspell hooks serve policy.py`` on the command line).

See ``docs/distributed.md``.
"""

from llmspell.distributed.context import (
    HOP_LIMIT,
    DistributedHookContext,
    Origin,
    current_context,
)
from llmspell.distributed.policy import load_policy
from llmspell.distributed.remote import DEFAULT_TIMEOUT, HookClient, RemoteHook, RemoteHookStats
from llmspell.distributed.server import DEFAULT_QUEUE, HookServer, HookServerStats, ServedHook
from llmspell.distributed.signing import DEFAULT_KEY_ENV, KEY_FROM_ENV, SharedKey, Signer

__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_QUEUE",
    "DEFAULT_TIMEOUT",
    "HOP_LIMIT",
    "KEY_FROM_ENV",
    "DistributedHookContext",
    "HookClient",
    "HookServer",
    "HookServerStats",
    "Origin",
    "RemoteHook",
    "RemoteHookStats",
    "ServedHook",
    "SharedKey",
    "Signer",
    "current_context",
    "load_policy",
]
