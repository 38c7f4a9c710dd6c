from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models

from portal.admin_utils import ReadOnlyAdmin

from . import services
from .backends.base import BackendError
from .models import Cloud, CloudProject, ClusterAccount, CommandNode, Partition, PosixAccount, SlurmCluster


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
    list_filter = ["enabled", "sudo_mode", "user_dirs"]
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


# --------------------------------------------------------------- OpenStack

CLOUD_SECRETS = ("password", "application_credential_secret")


class _KeepSecretsForm(forms.ModelForm):
    """Like SlurmClusterForm: stored secrets are never rendered back;
    leaving them empty keeps them."""

    secrets = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.secrets:
            self.fields[name].widget = forms.PasswordInput(render_value=False)
            if self.instance.pk and getattr(self.instance, name):
                self.fields[name].help_text += " Stored; leave empty to keep it."

    def clean(self):
        data = super().clean()
        if self.instance.pk:
            stored = type(self.instance).objects.get(pk=self.instance.pk)
            for name in self.secrets:
                if not data.get(name):
                    data[name] = getattr(stored, name)
                    setattr(self.instance, name, data[name])
        return data


# A keystone URL typed without a scheme is https (Django 6's default; 5.x
# warns). The admin makes its form's fields through its formfield_overrides;
# CloudForm's Meta callback covers the class itself.
_HTTPS_URLS = {models.URLField: {"assume_scheme": "https"}}


def _https_urls(field, **kwargs):
    return field.formfield(**{**_HTTPS_URLS.get(type(field), {}), **kwargs})


class CloudForm(_KeepSecretsForm):
    """The cloud's admin credentials; a clouds.yaml entry is checked to exist."""

    secrets = CLOUD_SECRETS

    class Meta:
        model = Cloud
        fields = "__all__"
        formfield_callback = _https_urls

    def clean(self):
        data = super().clean()
        if data.get("auth_type") == Cloud.AuthType.CLOUDS_YAML and data.get("clouds_yaml_entry"):
            from django.conf import settings

            from .backends.base import InvalidRequest
            from .backends.openstack import auth_from_clouds_yaml

            try:
                auth_from_clouds_yaml(settings.NEPHELE_CLOUDS_YAML, data["clouds_yaml_entry"])
            except InvalidRequest as exc:
                self.add_error("clouds_yaml_entry", str(exc))
        return data


class CloudProjectForm(_KeepSecretsForm):
    secrets = ("application_credential_secret",)

    class Meta:
        model = CloudProject
        fields = "__all__"


class CloudProjectInline(admin.TabularInline):
    model = CloudProject
    form = CloudProjectForm
    extra = 0
    autocomplete_fields = ["project"]
    fields = ["project", "openstack_project_name", "openstack_project_id", "application_credential_id",
              "application_credential_secret", "created"]
    readonly_fields = ["created"]


def _sync_clouds(modeladmin, request, items):
    """items: [(cloud, projects or None)]"""
    from .clouds import openstack_quotas_sync

    for cloud, projects in items:
        try:
            done = openstack_quotas_sync(cloud, projects=projects)
        except BackendError as exc:
            modeladmin.message_user(request, f"{cloud}: {exc}", messages.ERROR)
            continue
        failed = [d for d in done if d.error]
        modeladmin.message_user(request, f"{cloud}: {len(done) - len(failed)} difference(s) fixed.")
        for d in failed:
            modeladmin.message_user(request, f"{cloud}: {d.project} {d.resource or d.what}: {d.error}", messages.ERROR)


@admin.register(Cloud)
class CloudAdmin(admin.ModelAdmin):
    form = CloudForm
    formfield_overrides = _HTTPS_URLS
    list_display = ["name", "site", "region", "enabled", "auth_url", "auth_type", "project_count", "last_sync"]
    list_filter = ["enabled", "auth_type", "region"]
    search_fields = ["name", "site", "auth_url", "region"]
    readonly_fields = ["last_sync", "created"]
    inlines = [CloudProjectInline]
    actions = ["sync_quotas", "sync_catalog", "sync_servers"]
    fieldsets = [
        (None, {"fields": ["name", "site", "enabled", "region", "auth_url"]}),
        ("Admin credentials", {"fields": ["auth_type", "username", "password", "user_domain_name", "project_name",
                                          "project_domain_name", "application_credential_id",
                                          "application_credential_secret", "clouds_yaml_entry"]}),
        ("Networks", {"fields": ["default_network", "external_network"]}),
        ("Projects", {"fields": ["project_name_prefix", "project_domain_id", "last_sync", "created"]}),
    ]

    @admin.display(description="projects")
    def project_count(self, obj):
        return obj.cloud_projects.count()

    @admin.action(description="Sync quotas to the cloud")
    def sync_quotas(self, request, queryset):
        _sync_clouds(self, request, [(cloud, None) for cloud in queryset])


@admin.register(CloudProject)
class CloudProjectAdmin(admin.ModelAdmin):
    form = CloudProjectForm
    list_display = ["project", "cloud", "openstack_project_name", "openstack_project_id", "created"]
    list_filter = ["cloud"]
    search_fields = ["project__slug", "project__name", "openstack_project_name", "openstack_project_id"]
    autocomplete_fields = ["project"]
    list_select_related = ["project", "cloud"]
    actions = ["sync_quotas"]

    @admin.action(description="Sync quotas to the cloud")
    def sync_quotas(self, request, queryset):
        by_cloud = {}
        for mapping in queryset.select_related("cloud", "project"):
            by_cloud.setdefault(mapping.cloud, []).append(mapping.project)
        _sync_clouds(self, request, list(by_cloud.items()))


# --------------------------------------------------------------------------- VM catalog

from .models import Flavor, Image, ProfileFlavor, VMProfile  # noqa: E402


@admin.action(description="Sync flavors and images")
def sync_catalog(modeladmin, request, queryset):
    from .catalog import catalog_sync

    for cloud in queryset:
        try:
            counts = catalog_sync(cloud)
        except BackendError as exc:
            modeladmin.message_user(request, f"{cloud}: {exc}", messages.ERROR)
            continue
        modeladmin.message_user(
            request,
            f"{cloud}: {counts['flavors']} flavor(s) ({counts['flavors_created']} new, "
            f"{counts['flavors_deleted']} gone), {counts['images']} image(s) ({counts['images_created']} new, "
            f"{counts['images_deleted']} gone), {counts['profiles_mapped']} profile(s) mapped.",
        )


CloudAdmin.sync_catalog = sync_catalog


class ProfileFlavorInline(admin.TabularInline):
    model = ProfileFlavor
    extra = 0
    fields = ["cloud", "flavor_id", "flavor_name"]


@admin.register(VMProfile)
class VMProfileAdmin(admin.ModelAdmin):
    list_display = ["name", "vcpus", "ram_mb", "disk_gb", "enabled", "clouds", "description"]
    list_filter = ["enabled", "cloud_flavors__cloud"]
    search_fields = ["name", "description"]
    readonly_fields = ["created"]
    inlines = [ProfileFlavorInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("cloud_flavors__cloud")

    @admin.display(description="mapped on")
    def clouds(self, obj):
        return ", ".join(m.cloud.name for m in obj.cloud_flavors.all()) or "-"


class _SyncedAdmin(ReadOnlyAdmin):
    """Rows kept by the catalog sync: shown, never edited here."""

    list_select_related = ["cloud"]


@admin.register(Flavor)
class FlavorAdmin(_SyncedAdmin):
    list_display = ["name", "cloud", "vcpus", "ram_mb", "disk_gb", "is_public", "seen_at"]
    list_filter = ["cloud", "is_public", "vcpus"]
    search_fields = ["name", "flavor_id"]


@admin.register(Image)
class ImageAdmin(_SyncedAdmin):
    list_display = ["name", "cloud", "size_mb", "os_distro", "os_version", "visibility", "status", "seen_at"]
    list_filter = ["cloud", "visibility", "status", "os_distro"]
    search_fields = ["name", "image_id", "os_distro", "owner"]

    @admin.display(description="size (MB)", ordering="size_bytes")
    def size_mb(self, obj):
        return "-" if obj.size_bytes is None else f"{obj.size_bytes / 2**20:.1f}"


from .vm_admin import sync_servers  # noqa: E402 - the VM screens register themselves

CloudAdmin.sync_servers = sync_servers
