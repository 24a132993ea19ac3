"""Guide step 3: a first event subscription.

Everything the runtime does is also published on its event bus: ``tool.<name>.started``,
``.completed``, ``.failed``, agent and model-call events, workflow steps, state changes.
Subscribers use dotted patterns (``*`` is one segment, ``**`` any number), receive events
inline (on the publisher's thread, in order) or queued (their own worker), and never slow
the operation down or break it when they fail. With a store, events are kept and can be
queried afterwards.

Run: ``python examples/guide/03_first_event.py``
"""

from __future__ import annotations

import asyncio

from llmspell.errors import ToolExecutionError
from llmspell.events import UniversalEvent
from llmspell.runtime import System, SystemConfig, tool


@tool()
def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


async def main() -> None:
    seen: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(divide)

        def show(event: UniversalEvent) -> None:
            seen.append(event.event_type)
            print(f"  [{event.event_type}] {event.data}")

        system.bus.subscribe("tool.divide.*", show)                   # inline delivery
        failures: list[UniversalEvent] = []
        system.bus.subscribe("tool.*.failed", failures.append, mode="queued")   # own worker
        system.bus.publish("app.note", {"text": "your own events use the same bus"})

        print("10 / 4 =", await system.tools.execute("divide", {"a": 10, "b": 4}))
        try:
            await system.tools.execute("divide", {"a": 1, "b": 0})
        except ToolExecutionError as exc:
            print("failed:", exc)
        await system.bus.drain()

        stored = system.store.query(pattern="tool.**") if system.store else []
        print(f"{len(stored)} tool events in the store; "
              f"{len(failures)} delivered to the queued failure subscriber")
    assert seen == ["tool.divide.started", "tool.divide.completed",
                    "tool.divide.started", "tool.divide.failed"]
    assert len(stored) == 4 and len(failures) == 1


if __name__ == "__main__":
    asyncio.run(main())
