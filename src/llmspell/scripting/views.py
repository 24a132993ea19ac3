"""What a script sees of a hook context and of an event (the same fields in every
language). The engines build these views themselves on their fast paths (Lua builds the
tables from the fields, JavaScript encodes the fields' JSON); these dicts are the reference
shape, and the path every unusual value takes."""

from __future__ import annotations

from typing import Any

from llmspell.events.event import UniversalEvent
from llmspell.hooks.context import HookContext

__all__ = ["event_view", "hook_context_view"]


def hook_context_view(ctx: HookContext) -> dict[str, Any]:
    """What a script hook receives: ``{point, correlation_id, component_id, language,
    metadata, data}``."""
    return {
        "point": str(ctx.point),
        "correlation_id": ctx.correlation_id,
        "component_id": {"type": str(ctx.component.type), "name": ctx.component.name},
        "language": str(ctx.language),
        "metadata": dict(ctx.metadata),
        "data": ctx.data,
    }


def event_view(event: UniversalEvent) -> dict[str, Any]:
    """What a script sees of an event (the same fields in every language)."""
    m = event.metadata
    language = str(event.language)
    return {
        "id": event.id, "type": event.event_type, "event_type": event.event_type,
        "data": event.data, "language": language, "timestamp": event.timestamp,
        "sequence": event.sequence, "correlation_id": m.correlation_id, "source": m.source,
        "target": m.target, "tags": list(m.tags), "priority": m.priority,
        # the seed's scripts read these under `metadata`
        "metadata": {"source_language": language, "timestamp": event.timestamp,
                     "correlation_id": m.correlation_id, "tags": list(m.tags)},
    }
