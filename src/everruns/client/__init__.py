"""Python SDK for the everruns HTTP API: sync `Client` and async `AsyncClient`.

```python
from everruns import Client
client = Client("http://127.0.0.1:8000", token=...)
agent = client.agents.create_from_file("researcher.yaml")
run = client.runs.start(agent.name, input="Survey durable execution")
for event in client.runs.stream(run.id):      # reconnects by itself with Last-Event-ID
    print(event.type, event.data)
print(client.runs.wait(run.id).result)
```

`AsyncClient` has the same methods (`await client.runs.get(...)`,
`async for event in client.runs.stream(...)`). Both are thin shells over `core`, which
builds the requests, parses the replies and errors, follows the event stream and holds
the reconnect policy.
"""

from everruns.client.aio import AsyncClient
from everruns.client.models import (
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    Agent,
    ApiError,
    Event,
    MemoryItem,
    Run,
    Schedule,
    Usage,
)
from everruns.client.sync import Client

__all__ = [
    "TERMINAL_EVENTS",
    "TERMINAL_STATUSES",
    "Agent",
    "ApiError",
    "AsyncClient",
    "Client",
    "Event",
    "MemoryItem",
    "Run",
    "Schedule",
    "Usage",
]
