"""The project's Dagster instance (``dagster_home/dagster.yaml``, ``instance_class``): Dagster's own, except that
its SQLite storage is created by one process at a time.

Dagster creates a fresh instance's SQLite databases in whichever process opens it first, and stamps their alembic
revision without a lock between processes: two commands started together on a new ``DAGSTER_HOME`` (two
``dagster job execute``, or the UI and a CLI run) both stamp, and from then on every command on that instance fails
with alembic's "'alembic_version' has more than one head present". Here the storage is opened under an exclusive
lock on ``<DAGSTER_HOME>/.storage-init.lock`` (the kernel's ``flock``, released when its holder dies): the first
process creates the databases, the others wait for it and then open what it made. Once created, opening is a few
reads, so the lock costs nothing noticeable. An instance already broken that way (by an earlier version of this
project) is repaired under the same lock.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._serdes import ConfigurableClassData

INIT_LOCK = ".storage-init.lock"
INIT_TIMEOUT_S = 300.0
"""How long a process waits for another to finish creating the storage before it gives up, naming the lock."""


class InstanceInitError(RuntimeError):
    """The instance's storage could not be opened (another process kept it locked too long)."""


@contextmanager
def storage_init_lock(base_dir: str | os.PathLike, timeout_s: float = INIT_TIMEOUT_S) -> Iterator[None]:
    """Hold ``<base_dir>/.storage-init.lock`` exclusively, waiting up to ``timeout_s`` for another holder."""
    Path(base_dir).mkdir(parents=True, exist_ok=True)
    lock = Path(base_dir) / INIT_LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InstanceInitError(
                        f"another process has held {lock} for more than {timeout_s:.0f} s while opening the Dagster "
                        "instance's storage; if no other dagster command is starting, that process is stuck: "
                        "stop it and run the command again") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _known_heads(revisions: set[str]) -> set[str]:
    """``revisions`` less every one that is an ancestor of another in the set (Dagster's alembic scripts)."""
    from alembic.script import ScriptDirectory
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.sql import get_alembic_config

    script = ScriptDirectory.from_config(get_alembic_config(sqlite_run_storage.__file__))
    older = set()
    for revision in revisions:
        older |= {r.revision for r in script.iterate_revisions(revision, "base")} - {revision}
    return revisions - older


def repair_racing_revisions(db_file: str | os.PathLike) -> bool:
    """Leave one row in ``alembic_version`` where two processes stamped the same new database at once.

    The loser of that race finds the tables the winner just created, takes them for an old database and stamps an
    older revision beside the winner's head: alembic then sees "more than one head". The tables are the head's
    (created whole by the winner), so the rows that are ancestors of another row are removed; revisions that are
    not in one line are left for Dagster to report. Returns whether anything was repaired.
    """
    if not Path(db_file).is_file():
        return False
    with sqlite3.connect(db_file) as connection:
        try:
            rows = [r[0] for r in connection.execute("SELECT version_num FROM alembic_version")]
        except sqlite3.OperationalError:  # no such table yet: nothing was stamped
            return False
        if len(rows) < 2:
            return False
        try:
            heads = _known_heads(set(rows))
        except Exception:  # noqa: BLE001 - a revision these scripts do not know: not ours to repair
            return False
        if len(heads) != 1:
            return False
        connection.execute("DELETE FROM alembic_version")
        connection.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (heads.pop(),))
    return True


def _databases(base_dir: str) -> list[Path]:
    """The SQLite files whose creation races: runs, schedules and the event log's index (per-run event files are
    each written by their own run)."""
    root = Path(base_dir)
    return [root / "history" / "runs.db", root / "schedules" / "schedules.db", root / "history" / "runs" / "index.db"]


class SerializedSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage, opened under :func:`storage_init_lock` (see the module's docstring)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        with storage_init_lock(base_dir):
            for db_file in _databases(base_dir):
                repair_racing_revisions(db_file)
            super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # Dagster's names its own class here, not cls
        return cls.from_local(inst_data=inst_data, **config_value)


class ProjectInstance(DagsterInstance):
    """``DagsterInstance`` whose default storage is :class:`SerializedSqliteStorage` (a ``storage:`` section in
    ``dagster.yaml`` still takes precedence, as for Dagster's own default)."""

    @classmethod
    def config_schema(cls) -> Mapping:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        defaults = dict(InstanceRef.config_defaults(base_dir))
        defaults["storage"] = ConfigurableClassData(
            __name__, SerializedSqliteStorage.__name__, yaml.dump({"base_dir": base_dir}, default_flow_style=False))
        return defaults
