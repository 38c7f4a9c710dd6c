"""Staff screens for servers, volumes, floating IPs and SSH keys.

Records change state only through clusters.vms (named transitions and
quota bookkeeping), so these screens are read-only apart from the
`protected` flag; what staff do happens through actions: refresh from the
cloud, force delete (even protected servers), release a floating IP, and
on the Cloud screen "Sync servers and volumes now"."""
from django.contrib import admin, messages

from portal.admin_utils import ReadOnlyAdmin

from . import vms
from .backends.base import BackendError
from .vm_models import FloatingIP, Server, ServerEvent, ServerInterval, SSHKey, Volume


def _each(modeladmin, request, queryset, verb, fn):
    done = 0
    for obj in queryset:
        try:
            fn(obj)
            done += 1
        except (vms.RequestRefused, BackendError) as exc:
            modeladmin.message_user(request, f"{obj}: {exc}", messages.ERROR)
    if done:
        modeladmin.message_user(request, f"{verb}: {done} of {queryset.count()}.")


class ServerEventInline(admin.TabularInline):
    model = ServerEvent
    fields = ["at", "kind", "message", "actor"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-at", "-pk"]

    def has_add_permission(self, request, obj=None):
        return False


class ServerIntervalInline(ServerEventInline):
    model = ServerInterval
    fields = ["profile", "running", "started", "ended"]
    readonly_fields = fields
    ordering = ["started", "pk"]


class VolumeInline(ServerEventInline):
    model = Volume
    fields = ["name", "size_gb", "state", "device", "openstack_id"]
    readonly_fields = fields
    ordering = ["name"]
    show_change_link = True


@admin.register(Server)
class ServerAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "owner", "cloud", "profile", "state", "task_state", "ips", "protected",
                    "created"]
    list_filter = ["state", "protected", "cloud", "profile", "project"]
    search_fields = ["name", "openstack_id", "owner__username", "project__slug"]
    list_select_related = ["project", "owner", "cloud", "profile"]
    date_hierarchy = "created"
    inlines = [VolumeInline, ServerIntervalInline, ServerEventInline]
    actions = ["refresh", "force_delete", "protect", "unprotect"]
    fieldsets = [
        (None, {"fields": ["name", "project", "owner", "cloud", "profile", "resize_to", "image_name", "image_ref",
                           "key_name", "network", "protected"]}),
        ("State", {"fields": ["state", "state_changed", "cloud_status", "task_state", "fault", "addresses",
                              "openstack_id", "last_seen"]}),
        ("Quota held", {"fields": ["quota_reserved", "quota_used"]}),
        ("Times", {"fields": ["created", "launched_at", "deleted_at"]}),
        ("User data", {"fields": ["user_data"], "classes": ["collapse"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Server._meta.fields if f.name not in ("protected", "id")]

    def has_add_permission(self, request):
        return False  # servers are launched through the portal, which reserves their quota

    def has_delete_permission(self, request, obj=None):
        return False  # "Force delete" deletes on the cloud and gives the quota back

    def save_model(self, request, obj, form, change):
        if "protected" in form.changed_data:
            vms.server_protect(server=obj, protected=obj.protected, actor=request.user)

    @admin.display(description="addresses")
    def ips(self, obj):
        return ", ".join(obj.fixed_ips() + obj.floating_ips())

    @admin.action(description="Refresh from the cloud")
    def refresh(self, request, queryset):
        _each(self, request, queryset, "Refreshed", lambda s: vms.server_refresh(server_id=s.pk))

    @admin.action(description="Force delete (even protected ones)")
    def force_delete(self, request, queryset):
        _each(self, request, queryset.exclude(state="deleted"), "Deletion started",
              lambda s: vms.server_delete_request(server=s, actor=request.user, force=True))

    @admin.action(description="Protect from deletion")
    def protect(self, request, queryset):
        _each(self, request, queryset, "Protected",
              lambda s: vms.server_protect(server=s, protected=True, actor=request.user))

    @admin.action(description="Remove deletion protection")
    def unprotect(self, request, queryset):
        _each(self, request, queryset, "Unprotected",
              lambda s: vms.server_protect(server=s, protected=False, actor=request.user))


@admin.register(Volume)
class VolumeAdmin(ReadOnlyAdmin):
    list_display = ["name", "project", "owner", "cloud", "size_gb", "state", "server", "device", "created"]
    list_filter = ["state", "cloud", "project"]
    search_fields = ["name", "openstack_id", "owner__username", "project__slug"]
    list_select_related = ["project", "owner", "cloud", "server"]
    actions = ["refresh", "force_delete"]

    def has_change_permission(self, request, obj=None):
        return obj is None  # the change list (for actions), not the edit form

    @admin.action(description="Refresh from the cloud")
    def refresh(self, request, queryset):
        _each(self, request, queryset, "Refreshed", lambda v: vms.volume_refresh(volume_id=v.pk))

    @admin.action(description="Force delete (even attached ones)")
    def force_delete(self, request, queryset):
        _each(self, request, queryset.exclude(state="deleted"), "Deletion started",
              lambda v: vms.volume_delete_request(volume=v, actor=request.user, force=True))


@admin.register(FloatingIP)
class FloatingIPAdmin(ReadOnlyAdmin):
    list_display = ["address", "project", "cloud", "server", "state", "created", "released_at"]
    list_filter = ["state", "cloud", "project"]
    search_fields = ["address", "openstack_id", "project__slug"]
    list_select_related = ["project", "cloud", "server"]
    actions = ["release"]

    def has_change_permission(self, request, obj=None):
        return obj is None

    @admin.action(description="Release on the cloud")
    def release(self, request, queryset):
        _each(self, request, queryset.exclude(state="released").exclude(server=None), "Release started",
              lambda f: vms.floating_ip_release_request(server=f.server, actor=request.user))


@admin.register(SSHKey)
class SSHKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "fingerprint", "created"]
    search_fields = ["name", "owner__username", "fingerprint"]
    list_select_related = ["owner"]
    readonly_fields = ["fingerprint", "created"]


@admin.action(description="Sync servers and volumes now")
def sync_servers(modeladmin, request, queryset):
    for cloud in queryset:
        try:
            counts = vms.cloud_sync(cloud)
        except BackendError as exc:
            modeladmin.message_user(request, f"{cloud}: {exc}", messages.ERROR)
            continue
        modeladmin.message_user(
            request, f"{cloud}: {counts['servers']} server(s) and {counts['volumes']} volume(s) in step; "
                     f"{counts['servers_gone']} server(s) and {counts['volumes_gone']} volume(s) gone.")
