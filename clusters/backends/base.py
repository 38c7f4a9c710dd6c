"""What every backend client shares: typed errors and plain data records.

Backend clients are the only code that speaks SSH, HTTP or openstacksdk.
Services call them with plain values and get these records back, so a new
site type is one new module implementing the same methods.
"""
from dataclasses import dataclass, field
from datetime import datetime


class BackendError(Exception):
    """A backend refused or failed. `stderr` carries the remote message."""

    def __init__(self, message, *, stderr="", command=None, exit_status=None):
        super().__init__(message)
        self.stderr = stderr
        self.command = command
        self.exit_status = exit_status

    def __str__(self):
        base = super().__str__()
        return f"{base}: {self.stderr.strip()}" if self.stderr.strip() else base


class BackendUnavailable(BackendError):
    """No command node / endpoint could be reached (retry later)."""


class CommandFailed(BackendError):
    """The remote command ran and exited non-zero."""


class HostKeyMismatch(BackendUnavailable):
    """The server's host key is not the pinned one: never connect."""


class RemoteFileMissing(BackendError):
    """A remote file (e.g. a job's output) does not exist (yet)."""


class InvalidRequest(BackendError):
    """A value was refused before anything ran (bad user name, partition, ...)."""


@dataclass
class SubmitRequest:
    """Everything sbatch needs. `script` goes over stdin, never into a
    command line; every other value is passed as a separate, quoted argument."""

    script: str
    job_name: str
    workdir: str
    output: str
    error: str
    account: str = ""
    partition: str = ""
    nodes: int = 1
    cpus: int = 1
    memory_mb: int | None = None
    time_limit_minutes: int | None = None
    gpus: int = 0
    array: str = ""
    environment: dict = field(default_factory=dict)
    hold: bool = False


@dataclass
class QueueEntry:
    """One job as `squeue` reports it (array tasks aggregated by the caller)."""

    job_id: str
    name: str
    state: str
    reason: str = ""
    user: str = ""
    start: datetime | None = None
    array_job_id: str = ""
    array_task_id: str = ""


@dataclass
class AccountingEntry:
    """One job allocation row from `sacct` (not its steps)."""

    job_id: str
    name: str
    state: str
    exit_code: int | None
    signal: int | None
    user: str = ""
    account: str = ""
    partition: str = ""
    alloc_cpus: int = 0
    elapsed_seconds: int = 0
    cpu_time_raw: int = 0
    submit: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    array_job_id: str = ""
    array_task_id: str = ""


@dataclass
class PartitionInfo:
    name: str
    is_default: bool
    state: str
    max_time_minutes: int | None
    default_time_minutes: int | None
    max_nodes: int | None
    total_nodes: int
    total_cpus: int
    max_cpus_per_node: int | None = None
    max_mem_per_node_mb: int | None = None
