"""Worker process hardening: not dumpable, provider keys out of `os.environ`.

`harden()` runs once when a worker process starts (`everruns worker`, `everruns
server` with its embedded worker). It

- sets PR_SET_DUMPABLE=0: no core dumps, and processes of other users (and
  unprivileged ones of the same user) can no longer ptrace the worker or read its
  /proc/PID/environ, cmdline or memory;
- moves the credential variables (`CREDENTIALS`, every `*_API_KEY`, and the ones
  a spec names later, on first read) from `os.environ` into a private map, so a
  child process that inherits the environment (a library spawning a helper, a
  Python tool calling subprocess) does not get them.

Key lookups go through `getenv()`, which reads the map first. Moving a variable
out of `os.environ` cannot erase the copy the kernel shows in
/proc/PID/environ (the process's initial environment block): that is what the
non-dumpable flag and the tool sandbox's own pid namespace are for.
"""

from __future__ import annotations

import os
import re

from everruns.tools.sandbox import set_not_dumpable

CREDENTIALS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "EVERRUNS_MASTER_KEY")
_PATTERN = re.compile(r".+_API_KEY")

_held: dict[str, str] = {}
_hardened = False


def harden() -> list[str]:
    """Make this process non-dumpable and take the credentials out of its environment;
    returns the names taken (values are never logged)."""
    global _hardened
    set_not_dumpable()
    _hardened = True
    taken = [name for name in os.environ if name in CREDENTIALS or _PATTERN.fullmatch(name)]
    for name in taken:
        _held[name] = os.environ.pop(name)
    return sorted(taken)


def getenv(name: str) -> str | None:
    """A variable's value, from the held credentials or the environment. Once the
    process is hardened, a variable read this way leaves `os.environ` too."""
    if name in os.environ:
        value = os.environ[name]
        if _hardened:
            _held[name] = os.environ.pop(name)
        return value
    return _held.get(name)


def is_hardened() -> bool:
    return _hardened
