"""Virtual machines on the clouds: servers, volumes, floating IPs, the SSH
keys users inject into them, and each server's event history.

States mirror nova and cinder; they move only through the named transitions
of each model's machine (portal.states), decided by `clusters.vms`. Each
record carries the quota it holds (`quota_reserved` while the cloud works
on it, `quota_used` once the cloud confirmed), so releasing is exact and
idempotent, and the recount can rebuild the counters from these rows.
"""
import base64
import hashlib
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse

from portal.states import StatefulMixin, StateMachine

resource_name = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
    "Letters, digits, '.', '_' or '-', starting with a letter or digit; at most 63 characters.",
)

SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def parse_public_key(text):
    """(type, base64 body, comment) of an OpenSSH public key line, or
    ValidationError saying what is wrong."""
    parts = (text or "").strip().split()
    if len(parts) < 2:
        raise ValidationError("Paste one OpenSSH public key line, e.g. \"ssh-ed25519 AAAA... you@laptop\".")
    kind, body = parts[0], parts[1]
    if kind not in SSH_KEY_TYPES:
        raise ValidationError(f"Unsupported key type {kind!r}; use one of: {', '.join(SSH_KEY_TYPES[:3])}.")
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError:
        raise ValidationError("The key's body is not valid base64.") from None
    if not raw[4:4 + len(kind)] == kind.encode():
        raise ValidationError("The key's body does not match its type (a truncated or private key?).")
    if "\n" in text.strip():
        raise ValidationError("Paste exactly one key.")
    return kind, body, " ".join(parts[2:])


class SSHKey(models.Model):
    """An SSH public key a user keeps in their profile and picks when
    launching a server. On each cloud it becomes the nova keypair
    `nova_name` (keypairs belong to the portal's cloud user, so the name
    carries the key's id)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=64, validators=[resource_name])
    public_key = models.TextField(help_text="One OpenSSH public key line.")
    fingerprint = models.CharField(max_length=80, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner", "name"]
        verbose_name = "SSH key"
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="ssh_key_unique_name")]

    def __str__(self):
        return f"{self.name} ({self.fingerprint})"

    def clean(self):
        try:
            kind, body, _ = parse_public_key(self.public_key)
        except ValidationError as exc:
            raise ValidationError({"public_key": exc.messages}) from None
        self.public_key = self.public_key.strip()
        digest = hashlib.sha256(base64.b64decode(body)).digest()
        self.fingerprint = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def nova_name(self):
        return f"nephele-{self.pk}-{self.name}"[:255]


# --------------------------------------------------------------------------- servers


class ServerState(models.TextChoices):
    BUILDING = "building", "Building"
    ACTIVE = "active", "Active"
    SHUTOFF = "shutoff", "Shut off"
    REBOOTING = "rebooting", "Rebooting"
    RESIZING = "resizing", "Resizing"
    ERROR = "error", "Error"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"


S = ServerState
_LIVE = (S.BUILDING, S.ACTIVE, S.SHUTOFF, S.REBOOTING, S.RESIZING, S.ERROR)

SERVER_MACHINE = StateMachine(
    "state",
    {
        "mark_building": ((S.BUILDING,), S.BUILDING),
        "mark_active": ((S.BUILDING, S.ACTIVE, S.SHUTOFF, S.REBOOTING, S.RESIZING, S.ERROR), S.ACTIVE),
        "mark_shutoff": ((S.BUILDING, S.ACTIVE, S.SHUTOFF, S.REBOOTING, S.RESIZING, S.ERROR), S.SHUTOFF),
        "mark_rebooting": ((S.ACTIVE, S.SHUTOFF, S.REBOOTING), S.REBOOTING),
        "mark_resizing": ((S.ACTIVE, S.SHUTOFF, S.RESIZING), S.RESIZING),
        "mark_error": (_LIVE + (S.DELETING,), S.ERROR),
        "begin_delete": (_LIVE + (S.DELETING,), S.DELETING),
        "mark_deleted": (_LIVE + (S.DELETING,), S.DELETED),
    },
    final=(S.DELETED,),
)

# nova status -> the transition that mirrors it
NOVA_STATUS = {
    "BUILD": "mark_building",
    "ACTIVE": "mark_active",
    "SHUTOFF": "mark_shutoff", "STOPPED": "mark_shutoff", "PAUSED": "mark_shutoff", "SUSPENDED": "mark_shutoff",
    "SHELVED": "mark_shutoff", "SHELVED_OFFLOADED": "mark_shutoff",
    "REBOOT": "mark_rebooting", "HARD_REBOOT": "mark_rebooting",
    "RESIZE": "mark_resizing", "VERIFY_RESIZE": "mark_resizing", "REVERT_RESIZE": "mark_resizing",
    "MIGRATING": "mark_resizing",
    "ERROR": "mark_error",
    "DELETED": "mark_deleted", "SOFT_DELETED": "mark_deleted",
}


class Server(StatefulMixin, models.Model):
    machine = SERVER_MACHINE

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="servers")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="servers")
    cloud = models.ForeignKey("clusters.Cloud", on_delete=models.PROTECT, related_name="servers")
    name = models.CharField(max_length=63, validators=[resource_name])
    profile = models.ForeignKey("clusters.VMProfile", on_delete=models.PROTECT, related_name="servers")
    resize_to = models.ForeignKey(
        "clusters.VMProfile", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The profile a running resize moves to.",
    )
    image = models.ForeignKey("clusters.Image", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="servers")
    image_ref = models.CharField(max_length=64, help_text="Glance image id booted from.")
    image_name = models.CharField(max_length=255, blank=True)
    ssh_key = models.ForeignKey(SSHKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="servers")
    key_name = models.CharField(max_length=255, blank=True, help_text="Nova keypair injected at boot.")
    user_data = models.TextField(blank=True, help_text="cloud-init user data.")
    network = models.CharField(max_length=255, blank=True)
    want_floating_ip = models.BooleanField(default=False)
    protected = models.BooleanField(default=False, help_text="Protected servers cannot be deleted.")

    openstack_id = models.CharField(max_length=64, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=ServerState.choices, default=S.BUILDING, db_index=True)
    state_changed = models.DateTimeField(null=True, blank=True)
    cloud_status = models.CharField(max_length=32, blank=True, help_text="nova's status as last seen.")
    task_state = models.CharField(max_length=64, blank=True, help_text="nova's task in progress, e.g. spawning.")
    addresses = models.JSONField(default=dict, blank=True)
    fault = models.TextField(blank=True, help_text="The last error, for the user.")
    quota_reserved = models.JSONField(default=dict, blank=True)
    quota_used = models.JSONField(default=dict, blank=True)

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    launched_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True, help_text="Last time the cloud listed it.")

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["cloud", "state"])]

    def __str__(self):
        return f"{self.name} (#{self.pk})"

    def get_absolute_url(self):
        return reverse("vms:server", args=[self.pk])

    @property
    def is_busy(self):
        """The cloud is working on it: pages keep polling."""
        if self.state in (S.BUILDING, S.REBOOTING, S.RESIZING, S.DELETING) or self.task_state or self.resize_to_id:
            return True
        if self.state == S.DELETED:
            return False
        # .all() reads the prefetched rows when a list prefetched them (servers_visible_to does)
        return (any(f.state in ("allocating", "releasing") for f in self.floating_ip_set.all())
                or any(v.state in ("creating", "attaching", "detaching") for v in self.volumes.all()))

    @property
    def is_gone(self):
        return self.state == S.DELETED

    @property
    def state_badge(self):
        return {S.ACTIVE: "success", S.SHUTOFF: "secondary", S.ERROR: "danger", S.DELETED: "dark"}.get(
            self.state, "info")

    def fixed_ips(self):
        return [a["addr"] for addrs in (self.addresses or {}).values() for a in addrs if a.get("type") != "floating"]

    def floating_ips(self):
        return [a["addr"] for addrs in (self.addresses or {}).values() for a in addrs if a.get("type") == "floating"]


class ServerEvent(models.Model):
    """One line of a server's history: an action asked for, a state seen,
    an error."""

    class Kind(models.TextChoices):
        ACTION = "action", "Action"
        STATE = "state", "State"
        ERROR = "error", "Error"

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    message = models.CharField(max_length=1000)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self):
        return f"{self.server}: {self.message}"


# --------------------------------------------------------------------------- volumes


class VolumeState(models.TextChoices):
    CREATING = "creating", "Creating"
    AVAILABLE = "available", "Available"
    ATTACHING = "attaching", "Attaching"
    IN_USE = "in_use", "In use"
    DETACHING = "detaching", "Detaching"
    ERROR = "error", "Error"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"


V = VolumeState
_VLIVE = (V.CREATING, V.AVAILABLE, V.ATTACHING, V.IN_USE, V.DETACHING, V.ERROR)

VOLUME_MACHINE = StateMachine(
    "state",
    {
        "mark_creating": ((V.CREATING,), V.CREATING),
        "mark_available": (_VLIVE, V.AVAILABLE),
        "begin_attach": ((V.AVAILABLE, V.ATTACHING), V.ATTACHING),
        "mark_in_use": ((V.CREATING, V.AVAILABLE, V.ATTACHING, V.IN_USE, V.DETACHING, V.ERROR), V.IN_USE),
        "begin_detach": ((V.IN_USE, V.DETACHING), V.DETACHING),
        "mark_error": (_VLIVE + (V.DELETING,), V.ERROR),
        "begin_delete": ((V.CREATING, V.AVAILABLE, V.ERROR, V.DELETING), V.DELETING),
        "mark_deleted": (_VLIVE + (V.DELETING,), V.DELETED),
    },
    final=(V.DELETED,),
)

# cinder status -> transition
CINDER_STATUS = {
    "creating": "mark_creating", "downloading": "mark_creating",
    "available": "mark_available", "reserved": "begin_attach", "attaching": "begin_attach",
    "in-use": "mark_in_use", "detaching": "begin_detach",
    "error": "mark_error", "error_deleting": "mark_error", "error_extending": "mark_error",
    "deleting": "begin_delete", "deleted": "mark_deleted",
}


class Volume(StatefulMixin, models.Model):
    machine = VOLUME_MACHINE

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="volumes")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="volumes")
    cloud = models.ForeignKey("clusters.Cloud", on_delete=models.PROTECT, related_name="volumes")
    name = models.CharField(max_length=63, validators=[resource_name])
    size_gb = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(100_000)])
    server = models.ForeignKey(Server, null=True, blank=True, on_delete=models.SET_NULL, related_name="volumes",
                               help_text="The server it is attached to (or being attached to).")
    device = models.CharField(max_length=64, blank=True, help_text="Device path in the server, e.g. /dev/vdb.")

    openstack_id = models.CharField(max_length=64, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=VolumeState.choices, default=V.CREATING, db_index=True)
    state_changed = models.DateTimeField(null=True, blank=True)
    cloud_status = models.CharField(max_length=32, blank=True)
    fault = models.TextField(blank=True)
    quota_reserved = models.JSONField(default=dict, blank=True)
    quota_used = models.JSONField(default=dict, blank=True)

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["cloud", "state"])]

    def __str__(self):
        return f"{self.name} ({self.size_gb} GB, #{self.pk})"

    def get_absolute_url(self):
        return reverse("vms:volume", args=[self.pk])

    @property
    def is_busy(self):
        return self.state in (V.CREATING, V.ATTACHING, V.DETACHING, V.DELETING)

    @property
    def state_badge(self):
        return {V.AVAILABLE: "success", V.IN_USE: "primary", V.ERROR: "danger", V.DELETED: "dark"}.get(
            self.state, "info")


# --------------------------------------------------------------------------- floating IPs


class FloatingIPState(models.TextChoices):
    ALLOCATING = "allocating", "Allocating"
    ALLOCATED = "allocated", "Allocated"
    RELEASING = "releasing", "Releasing"
    RELEASED = "released", "Released"
    ERROR = "error", "Error"


F = FloatingIPState

FLOATING_IP_MACHINE = StateMachine(
    "state",
    {
        "mark_allocated": ((F.ALLOCATING, F.ALLOCATED, F.ERROR), F.ALLOCATED),
        "mark_error": ((F.ALLOCATING, F.ALLOCATED, F.RELEASING), F.ERROR),
        "begin_release": ((F.ALLOCATING, F.ALLOCATED, F.ERROR, F.RELEASING), F.RELEASING),
        "mark_released": ((F.ALLOCATING, F.ALLOCATED, F.ERROR, F.RELEASING), F.RELEASED),
    },
    final=(F.RELEASED,),
)


class FloatingIP(StatefulMixin, models.Model):
    """A public address of the project on a cloud, bound to one of its
    servers (`server`) or kept unbound."""

    machine = FLOATING_IP_MACHINE

    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="floating_ips")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="floating_ips")
    cloud = models.ForeignKey("clusters.Cloud", on_delete=models.PROTECT, related_name="floating_ips")
    server = models.ForeignKey(Server, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="floating_ip_set")
    address = models.GenericIPAddressField(null=True, blank=True)
    openstack_id = models.CharField(max_length=64, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=FloatingIPState.choices, default=F.ALLOCATING, db_index=True)
    state_changed = models.DateTimeField(null=True, blank=True)
    fault = models.TextField(blank=True)
    quota_reserved = models.JSONField(default=dict, blank=True)
    quota_used = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "floating IP"

    def __str__(self):
        return self.address or f"floating IP #{self.pk}"


class ServerInterval(models.Model):
    """A stretch of a server's life in one billing state with one profile:
    opened whenever the server starts, stops or changes profile, closed at
    the next change (`ended` empty: still open). VM usage (core-, RAM- and
    disk-GB-hours) is computed from these, so a stop or a resize is billed
    from the moment it happened."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="intervals")
    profile = models.ForeignKey("clusters.VMProfile", on_delete=models.PROTECT, related_name="+")
    running = models.BooleanField(help_text="Running (cores, RAM and disk billed) or stopped (disk only).")
    started = models.DateTimeField()
    ended = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["server", "started", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["server"], condition=models.Q(ended__isnull=True),
                                    name="server_interval_one_open"),
        ]
        # the usage rollup reads the intervals overlapping a few days
        indexes = [models.Index(fields=["ended", "started"], name="server_interval_span")]

    def __str__(self):
        return f"{self.server}: {'running' if self.running else 'stopped'} {self.profile} from {self.started}"
