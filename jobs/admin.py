from django.contrib import admin, messages

from clusters.backends.base import BackendError

from . import services
from .models import Job, JobTemplate


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "project", "owner", "cluster", "state", "scheduler_id", "exit_code", "created",
                    "ended_at"]
    list_filter = ["state", "cluster", "project"]
    search_fields = ["name", "scheduler_id", "owner__username", "owner__email", "project__slug"]
    date_hierarchy = "created"
    list_select_related = ["project", "owner", "cluster"]
    readonly_fields = ["state", "state_changed", "scheduler_id", "scheduler_state", "exit_code", "array_tasks",
                       "submitted_at", "started_at", "ended_at", "used_core_hours", "reserved_core_hours",
                       "submit_attempts", "posix_user", "account", "workdir", "output_path", "error_path"]
    actions = ["cancel_jobs", "resync"]

    def has_add_permission(self, request):
        return False  # jobs are composed by users (page or API), which checks quotas

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        from django.core.exceptions import ValidationError

        for job in queryset:
            try:
                services.job_cancel(job=job, actor=request.user)
            except (ValidationError, BackendError) as exc:
                self.message_user(request, f"#{job.pk}: {'; '.join(getattr(exc, 'messages', [str(exc)]))}",
                                  messages.WARNING)
            else:
                self.message_user(request, f"#{job.pk} cancelled.")

    @admin.action(description="Resync state from the cluster")
    def resync(self, request, queryset):
        clusters = {job.cluster for job in queryset}
        for cluster in clusters:
            try:
                services.jobs_sync(cluster=cluster)
            except BackendError as exc:
                self.message_user(request, f"{cluster}: {exc}", messages.ERROR)
        self.message_user(request, f"Resynced {len(clusters)} cluster(s).")


@admin.register(JobTemplate)
class JobTemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "cluster", "partition", "cpus", "time_limit_minutes", "created"]
    list_filter = ["cluster", ("owner", admin.EmptyFieldListFilter)]
    search_fields = ["name", "description", "owner__username"]
    autocomplete_fields = ["owner"]
