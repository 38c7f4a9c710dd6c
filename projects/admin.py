from django.contrib import admin
from django.utils.html import format_html

from . import services
from .models import Invitation, MemberUsage, Membership, Project, Quota, QuotaCorrection, QuotaRequest


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

    actions = ["recount_usage"]

    @admin.action(description="Recount usage from the source records")
    def recount_usage(self, request, queryset):
        from .quota_requests import quota_recount

        for project in queryset:
            corrections = quota_recount(project=project)
            detail = "; ".join(f"{c.quota.resource} {c.field} {c.stored}→{c.recounted}" for c in corrections)
            self.message_user(request, f"{project}: " + (f"corrected {detail}" if corrections else "no drift"),
                              level="warning" if corrections else "info")

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


@admin.register(QuotaRequest)
class QuotaRequestAdmin(admin.ModelAdmin):
    list_display = ["project", "resource", "requested_limit", "approved_limit", "status", "end_date", "requested_by",
                    "created", "decided_by"]
    list_filter = ["status", "resource"]
    search_fields = ["project__slug", "project__name", "requested_by__email", "justification"]
    list_select_related = ["project", "requested_by", "decided_by"]
    readonly_fields = ["project", "resource", "requested_limit", "justification", "end_date", "requested_by", "created",
                       "status", "approved_limit", "previous_limit", "decided_by", "decided_at", "expiry_warned_at",
                       "expired_at"]
    fields = readonly_fields + ["comment"]
    actions = ["approve", "deny"]

    def has_add_permission(self, request):
        return False  # members ask on the project page

    @admin.action(description="Approve as requested")
    def approve(self, request, queryset):
        self._decide(request, queryset, "approved")

    @admin.action(description="Deny")
    def deny(self, request, queryset):
        self._decide(request, queryset, "denied", comment="Denied by the staff; ask us for details.")

    def _decide(self, request, queryset, decision, comment=""):
        from django.core.exceptions import ValidationError

        from .quota_requests import quota_request_decide

        for quota_request in queryset:
            try:
                quota_request_decide(request=quota_request, staff=request.user, decision=decision, comment=comment)
            except ValidationError as exc:
                self.message_user(request, f"{quota_request}: {'; '.join(exc.messages)}", level="warning")
            else:
                self.message_user(request, f"{quota_request}: {decision}.")


@admin.register(QuotaCorrection)
class QuotaCorrectionAdmin(admin.ModelAdmin):
    list_display = ["at", "quota", "user", "field", "stored", "recounted"]
    list_filter = ["field", "quota__resource"]
    search_fields = ["quota__project__slug", "user__username"]
    list_select_related = ["quota__project", "user"]
    readonly_fields = ["quota", "user", "field", "stored", "recounted", "at"]

    def has_add_permission(self, request):
        return False
