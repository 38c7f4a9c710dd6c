from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from .models import User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["username", "email", "first_name", "last_name", "is_staff", "is_active", "last_login"]
    list_filter = ["is_staff", "is_superuser", "is_active"]
    search_fields = ["username", "email", "first_name", "last_name", "oidc_subject"]
    fieldsets = BaseUserAdmin.fieldsets + (("Identity provider", {"fields": ["oidc_subject", "last_claims"]}),)
    readonly_fields = ["oidc_subject", "last_claims", "last_login", "date_joined"]
    add_fieldsets = (
        (None, {"classes": ["wide"], "fields": ["username", "email", "password1", "password2"]}),
    )
