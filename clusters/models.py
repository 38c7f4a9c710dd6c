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

    class UserDirs(models.TextChoices):
        PRIVATE = "private", "Private: 0700, the user let in by an ACL (needs setfacl on the nodes)"
        SHARED = "shared", "Shared: 1777 like /tmp, so other users can read the output"

    name = models.SlugField(max_length=64, unique=True, help_text="Used in the API (`cluster`).")
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    ssh_user = models.CharField(max_length=32, validators=[posix_name], help_text="The portal's service user.")
    ssh_private_key = EncryptedTextField(help_text="OpenSSH private key of the service user (stored encrypted).")
    known_hosts = EncryptedTextField(
        help_text="Pinned host keys in known_hosts format (`[host]:port keytype base64`); unknown keys are refused."
    )
    sudo_mode = models.CharField(max_length=16, choices=SudoMode.choices, default=SudoMode.SUDO)
    submit_lanes = models.PositiveSmallIntegerField(
        default=2, validators=[MinValueValidator(1), MaxValueValidator(8)],
        help_text="sbatch sessions a large batch of submissions runs side by side on the command node "
                  "(1: one after the other). Batches under 8 jobs per session always run as one.",
    )
    work_prefix = models.CharField(
        max_length=255, default="/tmp/nephele", help_text="Per-user work and log directories are $PREFIX/$USER."
    )
    user_dirs = models.CharField(
        max_length=16, choices=UserDirs.choices, default=UserDirs.PRIVATE,
        help_text="How the portal sets up a $PREFIX/$USER directory it creates (it never changes one "
                  "the service user does not own).",
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


# --------------------------------------------------------------- OpenStack


class Cloud(models.Model):
    """One region of an OpenStack cloud, reached through Keystone with the
    portal's admin credentials (stored encrypted, never shown back). The
    portal creates an OpenStack project per portal project there
    (`CloudProject`) and pushes the project's limits to its quota sets."""

    class AuthType(models.TextChoices):
        PASSWORD = "password", "User name and password"
        APPLICATION_CREDENTIAL = "application_credential", "Application credential"
        CLOUDS_YAML = "clouds_yaml", "An entry of the portal's clouds.yaml"

    name = models.SlugField(max_length=64, unique=True, help_text="Used in the API (`cloud`).")
    site = models.CharField(max_length=200, blank=True, help_text="The site or institution running the cloud.")
    enabled = models.BooleanField(default=True)
    auth_url = models.URLField(max_length=255, blank=True,
                               help_text="Keystone v3 URL, e.g. https://keystone.example.org:5000/v3 "
                                         "(from the entry itself with clouds.yaml).")
    auth_type = models.CharField(max_length=32, choices=AuthType.choices, default=AuthType.PASSWORD)
    clouds_yaml_entry = models.CharField(
        max_length=255, blank=True,
        help_text="clouds.yaml authentication: the entry's name in the file NEPHELE_CLOUDS_YAML names "
                  "(kept on the server, so no secret is stored in the database).",
    )
    username = models.CharField(max_length=255, blank=True, help_text="Password authentication: an admin user.")
    password = EncryptedTextField(blank=True, help_text="Password authentication (stored encrypted).")
    user_domain_name = models.CharField(max_length=255, default="Default", blank=True)
    project_name = models.CharField(
        max_length=255, default="admin", blank=True,
        help_text="Password authentication: the project the admin user is scoped to (where it has the admin role).",
    )
    project_domain_name = models.CharField(max_length=255, default="Default", blank=True)
    application_credential_id = models.CharField(max_length=255, blank=True)
    application_credential_secret = EncryptedTextField(
        blank=True, help_text="Application credential authentication (stored encrypted)."
    )
    region = models.CharField(max_length=255, default="RegionOne")
    default_network = models.CharField(
        max_length=255, blank=True, help_text="Network new servers are attached to (empty: nova's automatic choice)."
    )
    external_network = models.CharField(
        max_length=255, default="public", blank=True, help_text="External network floating IPs are allocated on."
    )
    project_name_prefix = models.CharField(
        max_length=32, default="nephele-", blank=True,
        help_text="OpenStack projects created by the portal are named <prefix><project slug>.",
    )
    project_domain_id = models.CharField(
        max_length=64, default="default", help_text="Domain (id) the portal creates OpenStack projects in."
    )
    last_sync = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("admin:clusters_cloud_change", args=[self.pk])

    def clean(self):
        from django.core.exceptions import ValidationError

        errors = {}
        if self.auth_type == self.AuthType.CLOUDS_YAML:
            if not self.clouds_yaml_entry:
                errors["clouds_yaml_entry"] = "Required for clouds.yaml authentication."
        elif not self.auth_url:
            errors["auth_url"] = "Required unless the cloud comes from clouds.yaml."
        if self.auth_type == self.AuthType.PASSWORD:
            for name in ("username", "password", "project_name"):
                if not getattr(self, name):
                    errors[name] = "Required for password authentication."
        elif self.auth_type == self.AuthType.APPLICATION_CREDENTIAL:
            for name in ("application_credential_id", "application_credential_secret"):
                if not getattr(self, name):
                    errors[name] = "Required for application credential authentication."
        if errors:
            raise ValidationError(errors)

    def openstack_project_name_for(self, project):
        return f"{self.project_name_prefix}{project.slug}"


class CloudProject(models.Model):
    """The OpenStack project a portal project maps to on one cloud; created by
    the portal (named `<prefix><slug>`) when missing, or set by staff."""

    cloud = models.ForeignKey(Cloud, on_delete=models.CASCADE, related_name="cloud_projects")
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="cloud_projects")
    openstack_project_id = models.CharField(max_length=64, help_text="Keystone project id.")
    openstack_project_name = models.CharField(max_length=64, blank=True)
    application_credential_id = models.CharField(
        max_length=255, blank=True,
        help_text="Optional: an application credential of this OpenStack project. Needed when the cloud itself "
                  "authenticates with an application credential, which cannot act in other projects.",
    )
    application_credential_secret = EncryptedTextField(blank=True, help_text="Stored encrypted.")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cloud", "project"]
        constraints = [
            models.UniqueConstraint(fields=["cloud", "project"], name="cloud_project_unique"),
            models.UniqueConstraint(fields=["cloud", "openstack_project_id"], name="cloud_project_unique_id"),
        ]

    def __str__(self):
        return f"{self.project} -> {self.openstack_project_name or self.openstack_project_id}@{self.cloud}"


# --------------------------------------------------------------------------- VM catalog


class VMProfile(models.Model):
    """A named offer researchers pick when launching a VM ("m1.large"),
    mapped to a flavor on each cloud (`ProfileFlavor`). Its quota cost is
    `cost()`: cores, RAM, disk and one instance."""

    name = models.CharField(max_length=64, unique=True, help_text='Shown to researchers, e.g. "m1.large".')
    description = models.CharField(max_length=200, blank=True)
    vcpus = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    ram_mb = models.PositiveIntegerField(validators=[MinValueValidator(1)], help_text="RAM in MB.")
    disk_gb = models.PositiveIntegerField(default=0, help_text="Root disk in GB.")
    enabled = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["vcpus", "ram_mb", "name"]
        verbose_name = "VM profile"

    def __str__(self):
        return self.name

    def cost(self):
        """The quota one VM of this profile takes, keyed by `projects.models.Resource` values."""
        from projects.models import Resource

        return {Resource.CORES.value: self.vcpus, Resource.RAM_MB.value: self.ram_mb,
                Resource.DISK_GB.value: self.disk_gb, Resource.INSTANCES.value: 1}


class ProfileFlavor(models.Model):
    """The flavor a profile launches on one cloud (set by staff, or by the
    catalog sync when a flavor has the profile's name)."""

    cloud = models.ForeignKey(Cloud, on_delete=models.CASCADE, related_name="profile_flavors")
    profile = models.ForeignKey(VMProfile, on_delete=models.CASCADE, related_name="cloud_flavors")
    flavor_id = models.CharField(max_length=64, help_text="Nova flavor id on that cloud.")
    flavor_name = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["cloud", "profile"]
        constraints = [models.UniqueConstraint(fields=["cloud", "profile"], name="profile_flavor_unique")]

    def __str__(self):
        return f"{self.profile} -> {self.flavor_name or self.flavor_id}@{self.cloud}"


class Flavor(models.Model):
    """A nova flavor as last seen on a cloud (kept by `catalog.catalog_sync`)."""

    cloud = models.ForeignKey(Cloud, on_delete=models.CASCADE, related_name="flavors")
    flavor_id = models.CharField(max_length=64)
    name = models.CharField(max_length=255)
    vcpus = models.PositiveIntegerField(default=0)
    ram_mb = models.PositiveIntegerField(default=0)
    disk_gb = models.PositiveIntegerField(default=0)
    is_public = models.BooleanField(default=True)
    seen_at = models.DateTimeField()

    class Meta:
        ordering = ["cloud", "vcpus", "ram_mb", "name"]
        constraints = [models.UniqueConstraint(fields=["cloud", "flavor_id"], name="flavor_unique")]

    def __str__(self):
        return f"{self.name}@{self.cloud}"


class Image(models.Model):
    """A glance image as last seen on a cloud (kept by `catalog.catalog_sync`)."""

    class Visibility(models.TextChoices):
        PUBLIC = "public", "Public"
        PRIVATE = "private", "Private"
        SHARED = "shared", "Shared"
        COMMUNITY = "community", "Community"

    cloud = models.ForeignKey(Cloud, on_delete=models.CASCADE, related_name="images")
    image_id = models.CharField(max_length=64)
    name = models.CharField(max_length=255, blank=True)
    os_distro = models.CharField(max_length=64, blank=True, help_text="The image's os_distro property.")
    os_version = models.CharField(max_length=64, blank=True, help_text="The image's os_version property.")
    size_bytes = models.BigIntegerField(null=True, blank=True)
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC)
    owner = models.CharField(max_length=64, blank=True, help_text="Keystone id of the owning project.")
    status = models.CharField(max_length=32, blank=True)
    seen_at = models.DateTimeField()

    class Meta:
        ordering = ["cloud", "name"]
        constraints = [models.UniqueConstraint(fields=["cloud", "image_id"], name="image_unique")]

    def __str__(self):
        return f"{self.name or self.image_id}@{self.cloud}"


# Servers, volumes, floating IPs and SSH keys live in their own module.
from .vm_models import (  # noqa: E402,F401
    FloatingIP,
    Server,
    ServerEvent,
    ServerInterval,
    SSHKey,
    Volume,
)
