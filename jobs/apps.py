from django.apps import AppConfig


class JobsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "jobs"
    verbose_name = "Batch jobs"

    def ready(self):
        from projects.models import Resource
        from projects.quota_requests import register_recounter

        from .services import core_hours_by_member

        register_recounter(Resource.CORE_HOURS, core_hours_by_member)
