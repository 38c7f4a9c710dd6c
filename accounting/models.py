"""Per-user accounting from Slurm.

`UsageRecord` is one finished job allocation as slurmdbd reports it (one row
per array task), ingested in bulk by accounting.ingest; `DailyUsage` is the
rollup that reports read (they never scan raw records); `IngestWatermark`
remembers per cluster how far ingestion got.

Text taken from sacct is stored as `text` (no length limit), so an odd value
from the cluster can never make a bulk insert fail.
"""
from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex
from django.db import models


class UsageRecord(models.Model):
    # The foreign keys of this high-volume table have no database constraint
    # (db_constraint=False): checking them costs more than the whole insert
    # of a bulk ingest. The ingest only writes ids it has just joined from
    # their tables, and on_delete is Django's (the collector), as always.
    cluster = models.ForeignKey("clusters.SlurmCluster", on_delete=models.PROTECT, related_name="usage_records",
                                db_constraint=False, db_index=False)  # indexed by the unique (cluster, job_id)
    job_id = models.TextField(help_text="Slurm job id ('123', or '123_4' for an array task).")
    job_name = models.TextField(blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_records",
        db_constraint=False, db_index=False,  # reports read DailyUsage; users with jobs are never deleted
        help_text="Portal user owning the POSIX name; empty when nobody does.",
    )
    posix_user = models.TextField(blank=True)
    project = models.ForeignKey(
        "projects.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_records",
        db_constraint=False, db_index=False,
        help_text="From the cluster's account mappings, else the project whose slug is the account.",
    )
    account = models.TextField(blank=True, help_text="Slurm account.")
    partition = models.TextField(blank=True)
    state = models.TextField(blank=True, help_text="Slurm state, first word (CANCELLED, not 'CANCELLED by 1001').")
    exit_code = models.IntegerField(null=True, blank=True)
    exit_signal = models.IntegerField(null=True, blank=True)
    alloc_cpus = models.IntegerField(default=0)
    alloc_gpus = models.IntegerField(default=0)
    elapsed_seconds = models.BigIntegerField(default=0)
    cpu_seconds = models.BigIntegerField(default=0, help_text="CPUTimeRAW: allocated CPUs x elapsed.")
    req_mem_mb = models.BigIntegerField(null=True, blank=True)
    max_rss_mb = models.BigIntegerField(null=True, blank=True, help_text="Largest MaxRSS of the job's steps.")
    submit = models.DateTimeField(null=True, blank=True)
    start = models.DateTimeField(null=True, blank=True)
    end = models.DateTimeField()
    portal_job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_records",
        db_constraint=False, db_index=False,  # partial index below
        help_text="The portal job (matched by its Slurm name nephele-<id>-<random>).",
    )
    unmapped = models.BooleanField(default=False, help_text="User or project could not be mapped.")
    ingested = models.DateTimeField(help_text="First ingested.")
    updated = models.DateTimeField(help_text="Last changed by an ingest.")

    class Meta:
        ordering = ["-end"]
        constraints = [models.UniqueConstraint(fields=["cluster", "job_id"], name="usage_record_unique_job")]
        indexes = [
            # Records arrive roughly in end order: a BRIN index finds a day's
            # records for the rollup at almost no cost per insert.
            BrinIndex(fields=["end"], name="usage_record_end_brin"),
            models.Index(fields=["portal_job"], name="usage_record_portal_job",
                         condition=models.Q(portal_job__isnull=False)),
        ]

    def __str__(self):
        return f"{self.job_id}@{self.cluster_id}"

    @property
    def core_hours(self):
        return self.cpu_seconds / 3600

    @property
    def gpu_hours(self):
        return self.alloc_gpus * self.elapsed_seconds / 3600


class IngestWatermark(models.Model):
    cluster = models.OneToOneField("clusters.SlurmCluster", on_delete=models.CASCADE, related_name="ingest_watermark")
    last_end = models.DateTimeField(null=True, blank=True, help_text="Latest job end time ingested (never goes back).")
    last_run = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_rows = models.PositiveIntegerField(default=0, help_text="Records parsed in the last run.")
    last_changed = models.PositiveIntegerField(default=0, help_text="Records inserted or changed in the last run.")
    last_malformed = models.PositiveIntegerField(default=0)
    rows_total = models.BigIntegerField(default=0)
    malformed_total = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["cluster"]

    def __str__(self):
        return f"watermark of {self.cluster}"


class DailyUsage(models.Model):
    """Usage per (day, cluster, project, user, resource); the day is the UTC
    day a job ended (a job's whole usage counts on that day). Rebuilt per
    cluster and day by accounting.ingest.rollup; empty project/user: the
    records that could not be mapped."""

    class Resource(models.TextChoices):
        CORE_HOURS = "core_hours", "Core-hours"
        GPU_HOURS = "gpu_hours", "GPU-hours"
        JOBS = "jobs", "Jobs"

    # Derived data, rebuilt in bulk: foreign keys without database constraint
    # (on_delete is Django's), indexed for the reports below.
    day = models.DateField()
    cluster = models.ForeignKey("clusters.SlurmCluster", on_delete=models.CASCADE, related_name="daily_usage",
                                db_constraint=False, db_index=False)
    project = models.ForeignKey("projects.Project", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="daily_usage", db_constraint=False, db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="daily_usage", db_constraint=False, db_index=False)
    resource = models.CharField(max_length=16, choices=Resource.choices)
    amount = models.FloatField(default=0)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-day", "cluster", "project", "user", "resource"]
        constraints = [
            models.UniqueConstraint(fields=["day", "cluster", "project", "user", "resource"],
                                    name="daily_usage_unique", nulls_distinct=False),
        ]
        indexes = [
            models.Index(fields=["project", "day"], name="daily_usage_project_day"),
            models.Index(fields=["user", "day"], name="daily_usage_user_day"),
        ]

    def __str__(self):
        return f"{self.day} {self.resource}={self.amount}"


class CloudDailyUsage(models.Model):
    """VM usage per (day, cloud, project, user, resource), rebuilt from the
    servers' billing intervals (clusters.ServerInterval) and the volumes
    (clusters.Volume) by accounting.vm_usage; reports read it, never the
    intervals or volumes. The user is the server's (volume's) owner, the
    project its project. Separate from the Slurm DailyUsage, whose key and
    ingest are its own.

    Billing rule: a running interval bills vcpus x hours core-hours,
    ram_mb / 1024 x hours RAM-GB-hours and disk_gb x hours disk-GB-hours; a
    stopped one bills disk-GB-hours only. A volume bills size_gb x hours
    volume-GB-hours from its creation to its deletion (nothing if the cloud
    never made it). Spans are split at UTC midnight; an open one counts up
    to the time of the rebuild."""

    class Resource(models.TextChoices):
        VM_CORE_HOURS = "vm_core_hours", "VM core-hours"
        RAM_GB_HOURS = "ram_gb_hours", "RAM-GB-hours"
        DISK_GB_HOURS = "disk_gb_hours", "Disk-GB-hours"
        VOLUME_GB_HOURS = "volume_gb_hours", "Volume-GB-hours"

    # Derived data, rebuilt in bulk: foreign keys without database constraint
    # (on_delete is Django's), indexed for the reports below.
    day = models.DateField()
    cloud = models.ForeignKey("clusters.Cloud", on_delete=models.CASCADE, related_name="daily_usage",
                              db_constraint=False, db_index=False)
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="cloud_daily_usage",
                                db_constraint=False, db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="cloud_daily_usage",
                             db_constraint=False, db_index=False, help_text="The server's or volume's owner.")
    resource = models.CharField(max_length=16, choices=Resource.choices)
    amount = models.FloatField(default=0)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-day", "cloud", "project", "user", "resource"]
        verbose_name = "cloud daily usage"
        verbose_name_plural = "cloud daily usage"
        constraints = [
            models.UniqueConstraint(fields=["day", "cloud", "project", "user", "resource"],
                                    name="cloud_daily_usage_unique"),
        ]
        indexes = [
            models.Index(fields=["project", "day"], name="cloud_daily_usage_project_day"),
            models.Index(fields=["user", "day"], name="cloud_daily_usage_user_day"),
        ]

    def __str__(self):
        return f"{self.day} {self.resource}={self.amount}"
