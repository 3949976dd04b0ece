"""The tool sandbox: run a tool's process in its own namespaces with bubblewrap.

The `shell` built-in and stdio MCP servers start through `wrap()`. On Linux with
`bwrap` (Debian package `bubblewrap`) the process gets its own user, mount, pid,
IPC and UTS namespaces, and sees:

- the system read-only: /usr, /bin, /sbin, /lib*, /opt, and /etc with its
  secrets masked (shadow files, sudoers, ssh host keys);
- a private, empty /tmp and a fresh /proc of its own pid namespace (the worker
  and every other process of the machine are invisible);
- for the shell: its run's workspace, read-write, at the same path as on the
  host; nothing else (no other run's workspace, no database, no home directory);
- for an MCP server: its own files read-only (see `server_paths`), its `cwd`
  read-write, the worker's Python installation read-only;
- the network as the worker has it (not confined).

Everything else of the filesystem is absent, and the sandbox's root is
read-only. `--die-with-parent` ties the sandbox to the process that started it,
and when the first process inside exits, the pid namespace ends and the kernel
kills everything left in it (`setsid -f`, double forks and daemons included).

Where the sandbox cannot start (no bwrap, namespaces blocked), tools refuse to
run with a `SandboxUnavailable` error, unless the operator set `sandbox: none`
in settings: then commands run unconfined, as the worker's user, with the
worker's view of the filesystem.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from everruns.tools.base import ToolError

Mode = Literal["bwrap", "none"]
NAMESPACES = ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts")
# Shared with the host read-only: symlinks (usr-merged /bin, /lib) are recreated as such.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/etc")
# Files and folders of /etc a tool has no business reading.
ETC_SECRETS = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/everruns",
)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4


class SandboxUnavailable(ToolError):
    """The sandbox cannot start here, and the operator did not set `sandbox: none`."""


@dataclass
class SandboxConfig:
    """The operator's choice (settings `sandbox`, `sandbox_read_only`) plus what the
    sandbox must hide even inside paths it shares (the database file, the workspaces)."""

    mode: Mode = "bwrap"
    read_only: tuple[str, ...] = ()
    hidden: tuple[str, ...] = field(default_factory=tuple)


_config = SandboxConfig()


def configure(
    mode: Mode = "bwrap", read_only: tuple[str, ...] = (), hidden: tuple[str, ...] = ()
) -> None:
    """Set this process's sandbox (the worker calls it with its settings at start)."""
    global _config
    _config = SandboxConfig(mode=mode, read_only=tuple(read_only), hidden=tuple(hidden))


def current() -> SandboxConfig:
    return _config


# ------------------------------------------------------------------ process helpers


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that started it dies."""
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def set_not_dumpable() -> None:
    """No core dumps, no ptrace and no /proc/PID/environ|mem for non-root peers."""
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_DUMPABLE, 0)


# ------------------------------------------------------------------ availability


@functools.cache
def probe() -> tuple[tuple[str, ...], str | None]:
    """The namespace flags that work here, or why none do.

    Tries the full set first; as root in a container where user namespaces are
    blocked, bwrap still works without `--unshare-user` (root needs no mapping).
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return (), "bubblewrap (`bwrap`) is not installed (Debian: apt-get install bubblewrap)"
    attempts: list[tuple[str, ...]] = [NAMESPACES]
    if os.geteuid() == 0:
        attempts.append(NAMESPACES[1:])
    error = ""
    for flags in attempts:
        argv = [bwrap, *flags, *_system_binds(), "--proc", "/proc", "--dev", "/dev", "true"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = str(exc)
            continue
        if done.returncode == 0:
            return flags, None
        error = done.stderr.strip() or f"exit status {done.returncode}"
    return (), f"bwrap cannot create namespaces here: {error}"


def check() -> SandboxConfig:
    """The current config; raises SandboxUnavailable if it asks for a sandbox that
    cannot start."""
    config = current()
    if config.mode == "none":
        return config
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(
            "the tool sandbox needs Linux namespaces; set `sandbox: none` in the "
            "settings to run tools unconfined"
        )
    _, error = probe()
    if error is not None:
        raise SandboxUnavailable(
            f"the tool sandbox cannot start: {error}. Install bubblewrap, or set "
            "`sandbox: none` in the settings to run tools unconfined"
        )
    return config


# ------------------------------------------------------------------ the command line


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _masks(paths: list[str]) -> list[str]:
    args: list[str] = []
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--tmpfs", path]
        elif os.path.lexists(path):
            args += ["--ro-bind", "/dev/null", path]
    return args


def _etc_extras() -> list[str]:
    """/etc/resolv.conf and friends may point outside /etc (e.g. /run/systemd)."""
    args: list[str] = []
    for name in ("/etc/resolv.conf", "/etc/hosts", "/etc/localtime"):
        real = os.path.realpath(name)
        if os.path.exists(real) and not real.startswith(SYSTEM_DIRS):
            args += ["--ro-bind", real, real]
    return args


def _covers(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def wrap(
    argv: list[str],
    *,
    chdir: str,
    read_write: list[str] | None = None,
    read_only: list[str] | None = None,
) -> list[str]:
    """The bwrap command line that runs `argv` confined (see the module docstring);
    `argv` unchanged when the operator chose `sandbox: none`."""
    config = check()
    if config.mode == "none":
        return list(argv)
    flags, _ = probe()
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    args = [bwrap, *flags, "--die-with-parent", "--new-session"]
    args += _system_binds() + _etc_extras() + _masks(list(ETC_SECRETS))
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    read_write = read_write or []
    shared = [os.path.realpath(p) for p in (*config.read_only, *(read_only or []))]
    for path in dict.fromkeys(shared):
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for path in dict.fromkeys(os.path.realpath(p) for p in read_write):
        args += ["--bind", path, path]
    exposed = [*shared, *read_write]
    hidden = [
        p
        for p in (os.path.realpath(h) for h in config.hidden)
        if any(_covers(os.path.realpath(e), p) for e in exposed)
        and not any(_covers(p, os.path.realpath(w)) for w in read_write)
    ]
    args += _masks(hidden)
    args += ["--remount-ro", "/", "--chdir", chdir, "--", *argv]
    return args


def python_paths() -> list[str]:
    """The worker's Python installation (its venv and base interpreter), so that
    Python MCP servers installed next to the worker run inside the sandbox."""
    return sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})


def server_paths(executable: str, args: list[str]) -> list[str]:
    """What an MCP server needs to see of its own files, read-only.

    The executable's install prefix (the parent of its `bin/` folder, else its
    folder), and each absolute path among the arguments: a file's folder, a
    folder itself, and for anything inside a `node_modules` tree the folder that
    holds that tree (node resolves modules upwards from there). Paths that would
    expose what the sandbox hides (the root, the worker's folder, the workspaces,
    the database) are left out.
    """
    found: list[str] = []
    real = os.path.realpath(executable)
    folder = os.path.dirname(real)
    found.append(os.path.dirname(folder) if os.path.basename(folder) == "bin" else folder)
    for arg in args:
        if not os.path.isabs(arg) or not os.path.exists(arg):
            continue
        path = os.path.realpath(arg)
        parts = Path(path).parts
        if "node_modules" in parts:
            path = str(Path(*parts[: parts.index("node_modules")]))
        elif os.path.isfile(path):
            path = os.path.dirname(path)
        found.append(path)
    return [p for p in dict.fromkeys(found) if not exposes_hidden(p)]


def exposes_hidden(path: str) -> bool:
    """Would sharing `path` share the worker's folder, a hidden path or everything?"""
    real = os.path.realpath(path)
    if real == "/":
        return True
    hidden = [os.path.realpath(h) for h in current().hidden]
    if any(_covers(h, real) for h in hidden):
        return True
    guarded = [os.getcwd(), os.path.expanduser("~"), *hidden]
    return any(_covers(real, os.path.realpath(g)) for g in guarded if g)
