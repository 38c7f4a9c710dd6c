"""Accounting in the admin: everything read-only (it comes from Slurm, or
from the servers' billing intervals and the volumes for CloudDailyUsage)."""
from django.contrib import admin

from portal.admin_utils import ReadOnlyAdmin

from .models import CloudDailyUsage, DailyUsage, IngestWatermark, UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["job_id", "cluster", "job_name", "posix_user", "user", "account", "project", "state",
                    "alloc_cpus", "alloc_gpus", "core_hours_display", "end", "portal_job", "unmapped"]
    list_filter = ["cluster", "unmapped", "state", "partition", "end"]
    search_fields = ["job_id", "job_name", "posix_user", "account", "user__username", "user__email",
                     "project__slug", "project__name"]
    list_select_related = ["cluster", "user", "project", "portal_job"]
    date_hierarchy = "end"
    show_full_result_count = False  # no count(*) over millions of rows per page
    readonly_fields = [f.name for f in UsageRecord._meta.fields]

    @admin.display(description="core-hours", ordering="cpu_seconds")
    def core_hours_display(self, obj):
        return f"{obj.core_hours:.2f}"


@admin.register(IngestWatermark)
class IngestWatermarkAdmin(ReadOnlyAdmin):
    list_display = ["cluster", "last_end", "last_run", "last_rows", "last_changed", "last_malformed", "rows_total",
                    "malformed_total", "has_error"]
    search_fields = ["cluster__name"]
    readonly_fields = [f.name for f in IngestWatermark._meta.fields]

    @admin.display(boolean=True, description="error")
    def has_error(self, obj):
        return bool(obj.last_error)


@admin.register(DailyUsage)
class DailyUsageAdmin(ReadOnlyAdmin):
    list_display = ["day", "cluster", "project", "user", "resource", "amount"]
    list_filter = ["resource", "cluster", "day"]
    search_fields = ["project__slug", "project__name", "user__username", "user__email"]
    list_select_related = ["cluster", "project", "user"]
    date_hierarchy = "day"
    readonly_fields = [f.name for f in DailyUsage._meta.fields]


@admin.register(CloudDailyUsage)
class CloudDailyUsageAdmin(ReadOnlyAdmin):
    list_display = ["day", "cloud", "project", "user", "resource", "amount"]
    list_filter = ["resource", "cloud", "day"]
    search_fields = ["project__slug", "project__name", "user__username", "user__email"]
    list_select_related = ["cloud", "project", "user"]
    date_hierarchy = "day"
    readonly_fields = [f.name for f in CloudDailyUsage._meta.fields]
