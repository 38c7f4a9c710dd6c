from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from . import services
from .backends.base import BackendError
from .models import ClusterAccount, CommandNode, Partition, PosixAccount, SlurmCluster


class SecretTextarea(forms.Textarea):
    """Never renders the stored value back into the page."""

    def format_value(self, value):
        return ""


class SlurmClusterForm(forms.ModelForm):
    class Meta:
        model = SlurmCluster
        fields = "__all__"
        widgets = {"ssh_private_key": SecretTextarea(attrs={"rows": 4}), "known_hosts": SecretTextarea(attrs={"rows": 3})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            for name in ("ssh_private_key", "known_hosts"):
                self.fields[name].required = False
                self.fields[name].help_text += " Stored; leave empty to keep it."

    def clean(self):
        data = super().clean()
        for name in ("ssh_private_key", "known_hosts"):
            if self.instance.pk and not data.get(name):
                data[name] = getattr(type(self.instance).objects.get(pk=self.instance.pk), name)
        return data


class CommandNodeInline(admin.TabularInline):
    model = CommandNode
    extra = 0
    fields = ["position", "host", "port", "enabled", "last_ok_at", "last_error_at", "last_error"]
    readonly_fields = ["last_ok_at", "last_error_at", "last_error"]


class PartitionInline(admin.TabularInline):
    model = Partition
    extra = 0
    can_delete = False
    fields = ["name", "is_default", "state", "max_time_minutes", "max_nodes", "total_nodes", "total_cpus",
              "max_mem_per_node_mb", "synced"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


class ClusterAccountInline(admin.TabularInline):
    model = ClusterAccount
    extra = 0
    autocomplete_fields = ["project"]


@admin.register(SlurmCluster)
class SlurmClusterAdmin(admin.ModelAdmin):
    form = SlurmClusterForm
    list_display = ["name", "enabled", "sudo_mode", "ssh_user", "node_list", "partition_count", "last_sync"]
    list_filter = ["enabled", "sudo_mode"]
    search_fields = ["name", "description", "command_nodes__host"]
    inlines = [CommandNodeInline, PartitionInline, ClusterAccountInline]
    actions = ["sync_partitions", "resync_jobs", "push_limits"]

    @admin.action(description="Push project accounts and core-hour limits")
    def push_limits(self, request, queryset):
        from .limits import slurm_limits_sync

        for cluster in queryset:
            try:
                fixed = slurm_limits_sync(cluster=cluster)
            except BackendError as exc:
                self.message_user(request, f"{cluster}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{cluster}: {len(fixed)} difference(s) fixed.")

    @admin.display(description="command nodes")
    def node_list(self, obj):
        return ", ".join(str(n) for n in obj.command_nodes.all())

    @admin.display(description="partitions")
    def partition_count(self, obj):
        return obj.partitions.count()

    @admin.action(description="Sync partitions from the cluster")
    def sync_partitions(self, request, queryset):
        for cluster in queryset:
            try:
                names = [p.name for p in services.partitions_sync(cluster=cluster)]
            except (BackendError, Exception) as exc:  # noqa: BLE001 - shown to staff as is
                self.message_user(request, f"{cluster}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{cluster}: partitions {', '.join(names) or 'none'}.")

    @admin.action(description="Resync job states now")
    def resync_jobs(self, request, queryset):
        from jobs import services as job_services

        for cluster in queryset:
            try:
                result = job_services.jobs_sync(cluster=cluster)
            except BackendError as exc:
                self.message_user(request, f"{cluster}: {exc}", messages.ERROR)
            except ValidationError as exc:  # e.g. no enabled command node
                self.message_user(request, f"{cluster}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(request, f"{cluster}: {result['checked']} active job(s) checked.")


@admin.register(PosixAccount)
class PosixAccountAdmin(admin.ModelAdmin):
    list_display = ["user", "cluster", "username", "source"]
    list_filter = ["cluster", "source"]
    search_fields = ["user__username", "user__email", "username"]
    autocomplete_fields = ["user"]
    list_select_related = ["user", "cluster"]


@admin.register(Partition)
class PartitionAdmin(admin.ModelAdmin):
    list_display = ["name", "cluster", "is_default", "state", "max_time_minutes", "total_cpus", "synced"]
    list_filter = ["cluster", "state"]
    search_fields = ["name", "cluster__name"]


@admin.register(ClusterAccount)
class ClusterAccountAdmin(admin.ModelAdmin):
    list_display = ["project", "cluster", "account"]
    list_filter = ["cluster"]
    search_fields = ["project__slug", "account"]
    autocomplete_fields = ["project"]


@admin.register(CommandNode)
class CommandNodeAdmin(admin.ModelAdmin):
    list_display = ["host", "port", "cluster", "position", "enabled", "last_ok_at", "last_error_at"]
    list_filter = ["cluster", "enabled"]
    search_fields = ["host", "cluster__name"]
