"""Is the process that wrote a record still running? Used to tell a killed writer from a live one.

A pid alone is not enough: after a kill (or a reboot) the number can be reused by an unrelated process. An identity
therefore also records the host, the kernel's boot id and the process's start time (``/proc/<pid>/stat`` field 22),
so a record is only treated as live while that very process runs. Records from another host cannot be checked
from here and are reported as unknown, never as dead.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` split after the command name (which may contain spaces and parentheses)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # fields[0] is the state (field 3 of the file); the start time is field 22, i.e. fields[19]
    return int(fields[19]) if fields and len(fields) > 19 else None


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """``{"host", "pid", "boot_id", "start_ticks"}`` of ``pid`` (default: this process); JSON-serialisable."""
    pid = os.getpid() if pid is None else int(pid)
    return {"host": socket.gethostname(), "pid": pid, "boot_id": _boot_id(), "start_ticks": _start_ticks(pid)}


def process_is_gone(identity: Any) -> bool | None:
    """True when the process ``identity`` names has exited (or was killed), False while it runs, None when this
    machine cannot tell (another host, or a malformed identity)."""
    if not isinstance(identity, dict) or not isinstance(identity.get("pid"), int):
        return None
    if identity.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if identity.get("boot_id") and boot and identity["boot_id"] != boot:
        return True  # the machine rebooted since: every process of that boot is gone
    pid = identity["pid"]
    fields = _stat_fields(pid)
    if fields is None:
        if Path("/proc/self/stat").exists():
            return True  # Linux, and no such pid
        try:  # no /proc (macOS): signal 0 only checks that the pid exists
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    if fields[0] in ("Z", "X"):
        return True  # a zombie has exited; only its parent has not collected it yet
    recorded = identity.get("start_ticks")
    return recorded is not None and _start_ticks(pid) != recorded  # the pid now belongs to another process
