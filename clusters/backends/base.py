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


# --------------------------------------------------------------- OpenStack


class QuotaRefused(BackendError):
    """The cloud refused a request for quota reasons (HTTP 403/413, or a
    server put in ERROR by nova's quota recheck). `str()` carries the API's
    message, e.g. "Quota exceeded for cores: Requested 4, but already used
    0 of 1 cores"."""


class NotFound(BackendError):
    """The named cloud resource does not exist (any more)."""


class AuthenticationFailed(BackendError):
    """The cloud refused the credentials (wrong password, unknown project)."""


@dataclass
class FlavorRecord:
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    is_public: bool = True


@dataclass
class ImageRecord:
    id: str
    name: str
    status: str
    size: int | None = None
    disk_format: str = ""
    visibility: str = ""
    min_disk_gb: int = 0
    min_ram_mb: int = 0


@dataclass
class ServerRecord:
    """One server. `status` is nova's (BUILD, ACTIVE, SHUTOFF, REBOOT,
    HARD_REBOOT, RESIZE, VERIFY_RESIZE, REVERT_RESIZE, ERROR, DELETED, ...);
    `fault` is the fault message when status is ERROR ("" otherwise),
    `fault_code` its HTTP-like code (e.g. 500, or 413 for a quota refusal
    found by nova's recheck). `addresses` maps network name to a list of
    {"addr", "version", "type" ("fixed"|"floating"), "mac"}."""

    id: str
    name: str
    status: str
    task_state: str = ""
    power_state: int | None = None
    flavor_name: str = ""
    flavor_vcpus: int | None = None
    flavor_ram_mb: int | None = None
    flavor_disk_gb: int | None = None
    image_id: str = ""
    key_name: str = ""
    addresses: dict = field(default_factory=dict)
    fault: str = ""
    fault_code: int | None = None
    created: str = ""
    updated: str = ""
    project_id: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def fixed_ips(self):
        return [a["addr"] for nets in self.addresses.values() for a in nets if a.get("type") != "floating"]

    @property
    def floating_ips(self):
        return [a["addr"] for nets in self.addresses.values() for a in nets if a.get("type") == "floating"]


@dataclass
class QuotaUsage:
    """One resource's quota: `limit` (-1 = unlimited), `in_use`, `reserved`."""

    limit: int
    in_use: int = 0
    reserved: int = 0


@dataclass
class QuotaSet:
    """Quotas with usage per service, keyed by the API's own names:
    compute: cores, ram (MB), instances, key_pairs, ...; volume: volumes,
    gigabytes, snapshots, ...; network: floatingip, network, port, router,
    subnet, security_group, ..."""

    project_id: str
    compute: dict = field(default_factory=dict)
    volume: dict = field(default_factory=dict)
    network: dict = field(default_factory=dict)


@dataclass
class KeypairRecord:
    name: str
    fingerprint: str = ""
    public_key: str = ""
    private_key: str = ""  # only when the cloud generated the key


@dataclass
class VolumeRecord:
    """`status`: creating, available, attaching, in-use, detaching,
    deleting, error, ...; `attachments`: [{"server_id", "device",
    "attachment_id"}]."""

    id: str
    name: str
    size_gb: int
    status: str
    attachments: list = field(default_factory=list)
    volume_type: str = ""
    bootable: bool = False


@dataclass
class VolumeAttachmentRecord:
    id: str
    server_id: str
    volume_id: str
    device: str = ""


@dataclass
class FloatingIPRecord:
    """`status` stays DOWN on the test bed (no L3 agent)."""

    id: str
    address: str
    status: str
    port_id: str = ""
    fixed_address: str = ""
    network_id: str = ""


@dataclass
class ProjectRecord:
    id: str
    name: str
    domain_id: str = ""
    enabled: bool = True
