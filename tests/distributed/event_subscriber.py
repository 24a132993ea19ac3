"""A subscriber process for the distributed context event test.

``python -m tests.distributed.event_subscriber URL OUT KEY COUNT``: subscribes to
``order.*`` on the distributed bus at URL, prints ``ready``; for each event writes one JSON
line to OUT with the event's data, its run id, and the distributed context it carried
(read with ``DistributedHookContext.from_event``, its signature checked with KEY), then
exits after COUNT events.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from llmspell.core.errors import SignatureError
from llmspell.distributed import DistributedHookContext, SharedKey, Signer
from llmspell.events import UniversalEvent
from llmspell.events.distributed import DistributedBus, make_bus


async def main(url: str, out: str, key: str, count: int) -> int:
    bus = make_bus(url)
    assert isinstance(bus, DistributedBus)
    await bus.connect()
    signer = Signer(SharedKey(key))
    lines: list[dict[str, Any]] = []
    done = asyncio.Event()

    def handle(event: UniversalEvent) -> None:
        line: dict[str, Any] = {"data": event.data, "run_id": event.run_id}
        try:
            ctx = DistributedHookContext.from_event(event, bus, signer=signer)
        except SignatureError as exc:
            line["refused"] = exc.reason
        else:
            line["context"] = None if ctx is None else {
                "correlation_id": ctx.correlation_id, "run_id": ctx.run_id,
                "trace_id": ctx.trace_id, "span_id": ctx.span_id,
                "traceparent": ctx.traceparent, "hop": ctx.hop,
                "origin_process": ctx.origin.process}
        lines.append(line)
        if len(lines) >= count:
            done.set()

    bus.subscribe("order.*", handle)
    await bus.ready()
    print("ready", flush=True)
    await asyncio.wait_for(done.wait(), 60)
    Path(out).write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    await bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
