"""Transitional: the pure core moved to `everruns.core` (events, state, context, decide).

This module re-exports it under the old names so that code written against
`everruns.journal` (`from everruns import journal as j`) keeps working while other
branches are merged. New code imports from `everruns.core.*`; this shim goes away
once nothing imports it.
"""

from __future__ import annotations

from everruns.core.context import (
    CONTINUE_PROMPT as CONTINUE_PROMPT,
)
from everruns.core.context import (
    SUMMARY_HEADER as SUMMARY_HEADER,
)
from everruns.core.context import (
    compaction_cut as compaction_cut,
)
from everruns.core.context import (
    estimate_tokens as estimate_tokens,
)
from everruns.core.context import (
    model_view as model_view,
)
from everruns.core.decide import (
    MAX_CONTINUATIONS as MAX_CONTINUATIONS,
)
from everruns.core.decide import (
    Act as Act,
)
from everruns.core.decide import (
    Atom as Atom,
)
from everruns.core.decide import (
    CallPlan as CallPlan,
)
from everruns.core.decide import (
    Compact as Compact,
)
from everruns.core.decide import (
    Complete as Complete,
)
from everruns.core.decide import (
    Fail as Fail,
)
from everruns.core.decide import (
    Idle as Idle,
)
from everruns.core.decide import (
    Reason as Reason,
)
from everruns.core.decide import (
    Wait as Wait,
)
from everruns.core.decide import (
    decide as decide,
)
from everruns.core.events import (
    APPROVAL_DENIED as APPROVAL_DENIED,
)
from everruns.core.events import (
    APPROVAL_GRANTED as APPROVAL_GRANTED,
)
from everruns.core.events import (
    APPROVAL_REQUESTED as APPROVAL_REQUESTED,
)
from everruns.core.events import (
    CHILD_FINISHED as CHILD_FINISHED,
)
from everruns.core.events import (
    COMPACTION_STARTED as COMPACTION_STARTED,
)
from everruns.core.events import (
    CONTEXT_COMPACTED as CONTEXT_COMPACTED,
)
from everruns.core.events import (
    INTERRUPTED_MESSAGE as INTERRUPTED_MESSAGE,
)
from everruns.core.events import (
    LLM_COMPLETED as LLM_COMPLETED,
)
from everruns.core.events import (
    LLM_FAILED as LLM_FAILED,
)
from everruns.core.events import (
    LLM_FALLBACK as LLM_FALLBACK,
)
from everruns.core.events import (
    LLM_STARTED as LLM_STARTED,
)
from everruns.core.events import (
    MESSAGE_USER as MESSAGE_USER,
)
from everruns.core.events import (
    RUN_CANCELLED as RUN_CANCELLED,
)
from everruns.core.events import (
    RUN_COMPLETED as RUN_COMPLETED,
)
from everruns.core.events import (
    RUN_CREATED as RUN_CREATED,
)
from everruns.core.events import (
    RUN_FAILED as RUN_FAILED,
)
from everruns.core.events import (
    RUN_FORKED as RUN_FORKED,
)
from everruns.core.events import (
    RUN_PAUSED as RUN_PAUSED,
)
from everruns.core.events import (
    RUN_RESUMED as RUN_RESUMED,
)
from everruns.core.events import (
    RUN_STARTED as RUN_STARTED,
)
from everruns.core.events import (
    RUN_WAITING as RUN_WAITING,
)
from everruns.core.events import (
    TERMINAL_EVENTS as TERMINAL_EVENTS,
)
from everruns.core.events import (
    TERMINAL_STATUSES as TERMINAL_STATUSES,
)
from everruns.core.events import (
    TOOL_COMPLETED as TOOL_COMPLETED,
)
from everruns.core.events import (
    TOOL_FAILED as TOOL_FAILED,
)
from everruns.core.events import (
    TOOL_STARTED as TOOL_STARTED,
)
from everruns.core.events import (
    TOOL_WAITING as TOOL_WAITING,
)
from everruns.core.events import (
    TOOLS_LISTED as TOOLS_LISTED,
)
from everruns.core.events import (
    Event as Event,
)
from everruns.core.state import (
    TRUNCATION_MARKER as TRUNCATION_MARKER,
)
from everruns.core.state import (
    CallState as CallState,
)
from everruns.core.state import (
    State as State,
)
from everruns.core.state import (
    apply as apply,
)
from everruns.core.state import (
    fold as fold,
)
from everruns.core.state import (
    model_output as model_output,
)
from everruns.core.state import (
    transcript as transcript,
)
