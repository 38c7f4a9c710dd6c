from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    name = "projects"
    verbose_name = "Projects and quotas"

    def ready(self):
        from auditlog.registry import auditlog

        from .models import Invitation, Membership, Project, Quota

        # The audit trail: who changed what, when (shown in the admin).
        auditlog.register(Project)
        auditlog.register(Membership)
        auditlog.register(Invitation, exclude_fields=["token"])
        # used/reserved move with every request; the trail is about limits.
        auditlog.register(Quota, exclude_fields=["used", "reserved", "updated"])
