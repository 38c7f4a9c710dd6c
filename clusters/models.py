"""Compute sites: Slurm clusters reached over SSH (bwVisu-style command nodes),
their partitions, and each user's POSIX name on them."""
from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse

from portal.crypto import EncryptedTextField

posix_name = RegexValidator(
    r"^[a-z_][a-z0-9_-]{0,31}$", "A POSIX user name: lower-case letters, digits, '_' or '-', at most 32."
)


class SlurmCluster(models.Model):
    class SudoMode(models.TextChoices):
        SERVICE = "service", "Submit as the portal's service user"
        SUDO = "sudo", "sudo -n -u <user> on behalf of each user"

    name = models.SlugField(max_length=64, unique=True, help_text="Used in the API (`cluster`).")
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    ssh_user = models.CharField(max_length=32, validators=[posix_name], help_text="The portal's service user.")
    ssh_private_key = EncryptedTextField(help_text="OpenSSH private key of the service user (stored encrypted).")
    known_hosts = EncryptedTextField(
        help_text="Pinned host keys in known_hosts format (`[host]:port keytype base64`); unknown keys are refused."
    )
    sudo_mode = models.CharField(max_length=16, choices=SudoMode.choices, default=SudoMode.SUDO)
    work_prefix = models.CharField(
        max_length=255, default="/tmp/nephele", help_text="Per-user work and log directories are $PREFIX/$USER."
    )
    slurm_conf = models.CharField(
        max_length=255, blank=True, help_text="SLURM_CONF on the command nodes, if not the default."
    )
    gateway_nodes = models.JSONField(default=list, blank=True, help_text="bwVisu gateway nodes (kept for export).")
    port_range = models.CharField(max_length=32, blank=True, help_text="Gateway port range, e.g. 50000-60000.")
    last_sync = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("admin:clusters_slurmcluster_change", args=[self.pk])

    def account_for(self, project):
        mapping = self.accounts.filter(project=project).first()
        return mapping.account if mapping else project.slug


class CommandNode(models.Model):
    """A login/command node with sbatch & co. Nodes are tried in `position`
    order; one that fails is skipped until the next attempt."""

    cluster = models.ForeignKey(SlurmCluster, on_delete=models.CASCADE, related_name="command_nodes")
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    position = models.PositiveSmallIntegerField(default=0)
    enabled = models.BooleanField(default=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_ok_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["cluster", "position", "pk"]
        constraints = [models.UniqueConstraint(fields=["cluster", "host", "port"], name="command_node_unique")]

    def __str__(self):
        return f"{self.host}:{self.port}"


class ClusterAccount(models.Model):
    """Which Slurm account a project's jobs are charged to (default: its slug)."""

    cluster = models.ForeignKey(SlurmCluster, on_delete=models.CASCADE, related_name="accounts")
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="cluster_accounts")
    account = models.CharField(max_length=64, validators=[posix_name])

    class Meta:
        constraints = [models.UniqueConstraint(fields=["cluster", "project"], name="cluster_account_unique")]

    def __str__(self):
        return f"{self.project} -> {self.account}@{self.cluster}"


class Partition(models.Model):
    """A partition and its limits, as synced from `scontrol show partition`."""

    cluster = models.ForeignKey(SlurmCluster, on_delete=models.CASCADE, related_name="partitions")
    name = models.CharField(max_length=64)
    is_default = models.BooleanField(default=False)
    state = models.CharField(max_length=16, default="UP")
    max_time_minutes = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: unlimited.")
    default_time_minutes = models.PositiveIntegerField(null=True, blank=True)
    max_nodes = models.PositiveIntegerField(null=True, blank=True)
    total_nodes = models.PositiveIntegerField(default=0)
    total_cpus = models.PositiveIntegerField(default=0)
    max_cpus_per_node = models.PositiveIntegerField(null=True, blank=True)
    max_mem_per_node_mb = models.PositiveIntegerField(null=True, blank=True)
    synced = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cluster", "-is_default", "name"]
        constraints = [models.UniqueConstraint(fields=["cluster", "name"], name="partition_unique")]

    def __str__(self):
        return f"{self.name}@{self.cluster}"


class PosixAccount(models.Model):
    """A user's POSIX name on one cluster (from a claim, the profile or staff)."""

    class Source(models.TextChoices):
        CLAIM = "claim", "Identity provider claim"
        PROFILE = "profile", "User profile"
        STAFF = "staff", "Set by staff"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="posix_accounts")
    cluster = models.ForeignKey(SlurmCluster, on_delete=models.CASCADE, related_name="posix_accounts")
    username = models.CharField(max_length=32, validators=[posix_name])
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.STAFF)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "cluster"], name="posix_account_unique_user"),
            models.UniqueConstraint(fields=["cluster", "username"], name="posix_account_unique_name"),
        ]

    def __str__(self):
        return f"{self.username}@{self.cluster}"
