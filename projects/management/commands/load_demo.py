"""Load a small demo: one staff user (password printed), one researcher, two
projects with quotas. Safe to run again: existing objects are kept."""
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from projects import services
from projects.models import Membership, Project, Quota

DEMO_PROJECTS = [
    {
        "slug": "genomics",
        "name": "Population Genomics",
        "description": "Variant calling pipelines on the batch cluster and analysis VMs.",
        "limits": {"cores": 90, "ram_mb": 186 * 1024, "disk_gb": 1600, "instances": 7, "volumes": 10,
                   "volume_gb": 2000, "floating_ips": 7, "networks": 2, "core_hours": 50000},
        "per_member": {"cores": 16, "instances": 3},
        "used": {"cores": 24, "ram_mb": 48 * 1024, "disk_gb": 400, "instances": 3, "floating_ips": 2,
                 "networks": 1},
    },
    {
        "slug": "climate",
        "name": "Regional Climate Downscaling",
        "description": "Ensemble runs of a regional climate model.",
        "limits": {"cores": 74, "ram_mb": 75 * 1024, "disk_gb": 1400, "instances": 6, "volumes": 6,
                   "volume_gb": 1000, "floating_ips": 7, "networks": 1, "core_hours": 20000},
        "per_member": {},
        "used": {"cores": 64, "ram_mb": 70 * 1024, "disk_gb": 900, "instances": 5, "volumes": 5,
                 "volume_gb": 950, "floating_ips": 1, "networks": 1},
    },
]


class Command(BaseCommand):
    help = "Create a demo staff user, a researcher and two projects with quotas."

    def handle(self, *args, **options):
        User = get_user_model()
        password_file = settings.VAR_DIR / "demo-admin-password.txt"
        with transaction.atomic():
            admin = User.objects.filter(username="admin").first()
            if admin is None or not password_file.exists():
                password = secrets.token_urlsafe(12)
                if admin is None:
                    admin = User.objects.create_superuser("admin", "admin@example.org", password,
                                                          first_name="Site", last_name="Admin")
                else:
                    admin.set_password(password)
                    admin.save()
                password_file.write_text(password + "\n")
                password_file.chmod(0o600)
            password = password_file.read_text().strip()
            researcher, created = User.objects.get_or_create(
                username="rita", defaults={"email": "rita@example.org", "first_name": "Rita", "last_name": "Researcher"}
            )
            if created:
                researcher.set_password(password)
                researcher.save()
            for spec in DEMO_PROJECTS:
                if Project.objects.filter(slug=spec["slug"]).exists():
                    continue
                project = services.project_create(
                    slug=spec["slug"], name=spec["name"], description=spec["description"],
                    limits=spec["limits"], actor=admin, manager=admin,
                )
                services.membership_set(project=project, user=researcher, role=Membership.Role.MEMBER, actor=admin)
                for resource, per_member in spec["per_member"].items():
                    services.quota_set(project=project, resource=resource, limit=spec["limits"][resource],
                                       per_member_limit=per_member, actor=admin)
                # Demo usage, so the bars have something to show (core-hours
                # come from real jobs: the hourly recount would undo fakes).
                for resource, amount in spec["used"].items():
                    Quota.objects.filter(project=project, resource=resource).update(used=amount)
        self.stdout.write(self.style.SUCCESS("Demo data ready."))
        self.stdout.write(f"  Staff login:      admin@example.org / {password}")
        self.stdout.write(f"  Researcher login: rita@example.org / {password}")
