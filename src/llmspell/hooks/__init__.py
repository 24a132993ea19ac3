"""The hook engine: points, contexts, results, the registry, the executor, breakers and
composite hooks.

Knows nothing of agents, tools, events or scripts; those layers call it.
"""

from llmspell.hooks.breaker import (
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)
from llmspell.hooks.composite import (
    CompositeHook,
    FirstMatchHook,
    HookLike,
    ParallelHook,
    SequentialHook,
    TieBreaker,
    VotingHook,
    invoke,
)
from llmspell.hooks.context import ComponentId, ComponentType, HookContext, OperationContext
from llmspell.hooks.executor import NO_HOOKS, ChainResult, HookExecutor, HookFailure, HookRecord
from llmspell.hooks.hook import BaseHook, Hook, HookCallable, hook
from llmspell.hooks.metadata import ErrorPolicy, HookMetadata, Priority
from llmspell.hooks.monitor import LatencyStats, OverheadRow, PerformanceMonitor
from llmspell.hooks.points import CustomHookPoint, HookPoint, Point, parse_point
from llmspell.hooks.registry import HookHandle, HookInfo, HookRegistry, RegistryStats
from llmspell.hooks.replay import (
    DictHookAdapter,
    HookAdapter,
    Replayable,
    ReplayableHook,
    ScriptHookError,
)
from llmspell.hooks.result import (
    CONTINUE,
    Cache,
    Cancel,
    Continue,
    Fork,
    ForkOperation,
    HookResult,
    Modified,
    Redirect,
    Replace,
    Retry,
    Skipped,
    cancelled_error,
    model_call_cancelled_error,
)
from llmspell.hooks.selective import (
    FeatureInfo,
    HookFactory,
    LazyHook,
    SelectiveHookRegistry,
    SelectiveStats,
)

__all__ = [
    "DictHookAdapter",
    "HookAdapter",
    "Replayable",
    "ReplayableHook",
    "ScriptHookError",
    "CONTINUE",
    "NO_HOOKS",
    "BaseHook",
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "Cache",
    "Cancel",
    "ChainResult",
    "CircuitBreaker",
    "CompositeHook",
    "ComponentId",
    "ComponentType",
    "Continue",
    "CustomHookPoint",
    "ErrorPolicy",
    "FeatureInfo",
    "FirstMatchHook",
    "Fork",
    "ForkOperation",
    "Hook",
    "HookCallable",
    "HookContext",
    "HookExecutor",
    "HookFactory",
    "HookFailure",
    "HookHandle",
    "HookInfo",
    "HookLike",
    "HookMetadata",
    "HookPoint",
    "HookRecord",
    "HookRegistry",
    "HookResult",
    "LatencyStats",
    "LazyHook",
    "Modified",
    "OperationContext",
    "OverheadRow",
    "ParallelHook",
    "PerformanceMonitor",
    "Point",
    "Priority",
    "Redirect",
    "RegistryStats",
    "Replace",
    "Retry",
    "SelectiveHookRegistry",
    "SelectiveStats",
    "SequentialHook",
    "Skipped",
    "TieBreaker",
    "VotingHook",
    "cancelled_error",
    "hook",
    "invoke",
    "model_call_cancelled_error",
    "parse_point",
]
