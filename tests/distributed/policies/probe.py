"""Answers with the distributed context the call arrived in (lineage tests)."""

from llmspell.distributed import current_context
from llmspell.hooks import HookContext, Replace, hook


def view(ctx: HookContext) -> dict[str, object]:
    here = current_context()
    assert here is not None
    return {"correlation_id": here.correlation_id, "trace_id": here.trace_id,
            "span_id": here.span_id, "parent_ids": list(here.parent_ids), "hop": here.hop,
            "hop_limit": here.hop_limit, "run_id": here.run_id,
            "origin": {"host": here.origin.host, "process": here.origin.process,
                       "component": here.origin.component},
            "deadline": here.deadline, "hook_correlation_id": ctx.correlation_id}


@hook(name="probe")
def probe(ctx: HookContext) -> Replace:
    return Replace({"probe": view(ctx)})
