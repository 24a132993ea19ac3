"""The live web viewer (``llmspell view``): one page showing the event stream as it
happens, each run as a timeline of its agent, model and tool steps with every hook decision
that changed something, the hook latency table, breaker states and backpressure notices.

The pieces, each usable on its own:

* :mod:`~llmspell.viewer.source`: where events come from (:class:`StoreSource`, an event
  store file followed read-only; :class:`BusSource`, a bus subscription);
* :mod:`~llmspell.viewer.summary`: runs, steps, hook latencies, breakers, notices
  (:class:`Summary`);
* :mod:`~llmspell.viewer.feed`: each browser's bounded buffer, which summarises when the
  browser falls behind (:class:`Feed`);
* :mod:`~llmspell.viewer.hub`: one reader of the source for every browser, and each
  browser's Server-Sent Events (:class:`Hub`);
* :mod:`~llmspell.viewer.app`: the Starlette app (:func:`create_app`);
* :mod:`~llmspell.viewer.security` and :mod:`~llmspell.viewer.server`: who may connect,
  and serving with uvicorn (:class:`ViewerServer`); :class:`ThrottleLimits` sets how
  wrong tokens are throttled.

Starlette, sse-starlette and uvicorn come with ``pip install 'llmspell[viewer]'``; they are
imported only when an app is created or served. See docs/observability.md.
"""

from llmspell.viewer.app import create_app
from llmspell.viewer.feed import Feed, Item
from llmspell.viewer.hub import Hub, HubLimits
from llmspell.viewer.security import ThrottleLimits, check_bind, is_loopback
from llmspell.viewer.server import ViewerServer
from llmspell.viewer.source import BusSource, Source, StoreSource
from llmspell.viewer.summary import Summary

__all__ = ["BusSource", "Feed", "Hub", "HubLimits", "Item", "Source", "StoreSource", "Summary",
           "ThrottleLimits", "ViewerServer", "check_bind", "create_app", "is_loopback"]
