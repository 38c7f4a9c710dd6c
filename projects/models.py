"""Tenancy: projects, their members, invitations and quotas.

State changes go through projects.services; these models hold data and
small derived properties only.
"""
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.urls import reverse


class Resource(models.TextChoices):
    CORES = "cores", "vCPU cores"
    RAM_MB = "ram_mb", "RAM (MB)"
    DISK_GB = "disk_gb", "Disk (GB)"
    INSTANCES = "instances", "Instances"
    VOLUMES = "volumes", "Volumes"
    VOLUME_GB = "volume_gb", "Volume storage (GB)"
    FLOATING_IPS = "floating_ips", "Public IPs"
    NETWORKS = "networks", "Private networks"
    CORE_HOURS = "core_hours", "Core-hours"


RESERVED_SLUGS = {"quota-requests", "new"}  # page paths under /projects/


def not_reserved(slug):
    if slug in RESERVED_SLUGS:
        raise ValidationError(f"{slug!r} is reserved; choose another slug.")


RESOURCE_ORDER = {value: index for index, value in enumerate(Resource.values)}


class Project(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        ARCHIVED = "archived", "Archived"

    slug = models.SlugField(max_length=64, unique=True, validators=[not_reserved],
                            help_text="Short identifier used in URLs and the API.")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("projects:detail", args=[self.slug])

    @property
    def is_active(self):
        return self.status == self.Status.ACTIVE

    def sorted_quotas(self):
        """Quotas in the resource order of Resource (uses a prefetch if present)."""
        return sorted(self.quotas.all(), key=lambda q: RESOURCE_ORDER.get(q.resource, 99))


class Membership(models.Model):
    class Role(models.TextChoices):
        MANAGER = "manager", "Manager"
        MEMBER = "member", "Member"

    class Source(models.TextChoices):
        MANUAL = "manual", "Added by a manager or staff"
        INVITATION = "invitation", "Accepted an invitation"
        CLAIM = "claim", "Identity provider claim"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.MANUAL)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "project"], name="membership_unique")]
        ordering = ["project__name", "user__username"]

    def __str__(self):
        return f"{self.user} in {self.project} ({self.role})"

    @property
    def is_manager(self):
        return self.role == self.Role.MANAGER


def _new_token():
    return secrets.token_urlsafe(32)


class Invitation(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    token = models.CharField(max_length=64, unique=True, default=_new_token, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return f"Invitation of {self.email} to {self.project}"

    def get_absolute_url(self):
        return reverse("invitation", args=[self.token])


class Quota(models.Model):
    """A project's limit on one resource, with its usage and reservations.

    `used` counts what the backends confirmed; `reserved` what requests in
    flight have claimed but not yet confirmed. Both only move through
    projects.services.quota_* inside a transaction that locks this row.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="quotas")
    resource = models.CharField(max_length=32, choices=Resource.choices)
    limit = models.BigIntegerField(default=0, validators=[MinValueValidator(0)])
    per_member_limit = models.BigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(0)], help_text="Empty: no per-member cap."
    )
    used = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "resource"], name="quota_unique_resource"),
            models.CheckConstraint(condition=models.Q(limit__gte=0), name="quota_limit_non_negative"),
            models.CheckConstraint(condition=models.Q(used__gte=0), name="quota_used_non_negative"),
            models.CheckConstraint(condition=models.Q(reserved__gte=0), name="quota_reserved_non_negative"),
        ]
        ordering = ["project__name", "resource"]

    def __str__(self):
        return f"{self.project}: {self.get_resource_display()}"

    def clean(self):
        if self.per_member_limit is not None and self.limit is not None and self.per_member_limit > self.limit:
            raise ValidationError({"per_member_limit": "The per-member limit cannot exceed the project's total."})

    @property
    def consumed(self):
        return self.used + self.reserved

    @property
    def available(self):
        return max(self.limit - self.consumed, 0)

    @property
    def percent(self):
        """Share of the limit consumed (used + reserved), 0-100, for bars."""
        if self.limit <= 0:
            return 100 if self.consumed > 0 else 0
        return min(round(100 * self.consumed / self.limit), 100)

    @property
    def level(self):
        """Bootstrap colour for the bar: green, amber past 75 %, red past 90 %."""
        pct = self.percent
        return "danger" if pct >= 90 else "warning" if pct >= 75 else "success"


class MemberUsage(models.Model):
    """One member's share of a quota, for the per-member limit."""

    quota = models.ForeignKey(Quota, on_delete=models.CASCADE, related_name="member_usage")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota_usage")
    used = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["quota", "user"], name="member_usage_unique"),
            models.CheckConstraint(condition=models.Q(used__gte=0), name="member_used_non_negative"),
            models.CheckConstraint(condition=models.Q(reserved__gte=0), name="member_reserved_non_negative"),
        ]

    def __str__(self):
        return f"{self.user} on {self.quota}"

    @property
    def consumed(self):
        return self.used + self.reserved


class QuotaRequest(models.Model):
    """A member's or manager's request for a different limit, decided by staff.
    An approved limit with an end date falls back to `previous_limit` then."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        PARTIAL = "partial", "Partially approved"
        DENIED = "denied", "Denied"
        WITHDRAWN = "withdrawn", "Withdrawn"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="quota_requests")
    resource = models.CharField(max_length=32, choices=Resource.choices)
    requested_limit = models.BigIntegerField(validators=[MinValueValidator(0)])
    justification = models.TextField()
    end_date = models.DateField(null=True, blank=True, help_text="Empty: the new limit is permanent.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    approved_limit = models.BigIntegerField(null=True, blank=True)
    previous_limit = models.BigIntegerField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True, help_text="Shown to the requester.")
    expiry_warned_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return f"{self.project}: {self.get_resource_display()} -> {self.requested_limit}"

    @property
    def is_open(self):
        return self.status == self.Status.PENDING


class QuotaCorrection(models.Model):
    """A counter found to differ from the recount of its source records, and
    corrected. Kept so drift is reported, never silently absorbed."""

    quota = models.ForeignKey(Quota, on_delete=models.CASCADE, related_name="corrections")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             help_text="Set for a member's share; empty for the project total.")
    field = models.CharField(max_length=16)
    stored = models.BigIntegerField()
    recounted = models.BigIntegerField()
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self):
        return f"{self.quota} {self.field}: {self.stored} -> {self.recounted}"
