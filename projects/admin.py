from django.contrib import admin
from django.utils.html import format_html

from . import services
from .models import Invitation, MemberUsage, Membership, Project, Quota


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["source", "created"]


class QuotaInline(admin.TabularInline):
    model = Quota
    extra = 0
    fields = ["resource", "limit", "per_member_limit", "used", "reserved"]
    readonly_fields = ["used", "reserved"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "status", "member_count", "created"]
    list_filter = ["status", "created"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline, QuotaInline]
    date_hierarchy = "created"

    @admin.display(description="members")
    def member_count(self, obj):
        return obj.memberships.count()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # Projects made here get every quota row too, like project_create.
        services.quotas_ensure(project=form.instance)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "role", "source", "created"]
    list_filter = ["role", "source", "project"]
    search_fields = ["user__username", "user__email", "project__slug", "project__name"]
    autocomplete_fields = ["user", "project"]
    list_select_related = ["user", "project"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "project", "role", "status", "invited_by", "created", "expires_at"]
    list_filter = ["status", "role"]
    search_fields = ["email", "project__slug", "project__name"]
    readonly_fields = ["token", "accepted_at", "accepted_by"]
    autocomplete_fields = ["project", "invited_by"]
    list_select_related = ["project", "invited_by"]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["project", "resource", "limit", "per_member_limit", "used", "reserved", "usage_bar"]
    list_filter = ["resource", "project__status"]
    search_fields = ["project__slug", "project__name"]
    readonly_fields = ["used", "reserved"]
    list_select_related = ["project"]

    @admin.display(description="usage")
    def usage_bar(self, obj):
        return format_html("{} %", obj.percent)


@admin.register(MemberUsage)
class MemberUsageAdmin(admin.ModelAdmin):
    list_display = ["user", "quota", "used", "reserved"]
    search_fields = ["user__username", "user__email", "quota__project__slug"]
    list_filter = ["quota__resource"]
    list_select_related = ["user", "quota__project"]
    readonly_fields = ["quota", "user", "used", "reserved"]

    def has_add_permission(self, request):
        # Rows come from quota_reserve; every field is read-only, so an
        # added row would have no quota or user (a database error).
        return False
