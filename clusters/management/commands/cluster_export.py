"""Write Slurm clusters as bwVisu-style JSON (secrets are not exported)."""
import json

from django.core.management.base import BaseCommand

from clusters import services
from clusters.models import SlurmCluster


class Command(BaseCommand):
    help = "Export Slurm clusters (all, or the named ones) as bwVisu-style JSON."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*")

    def handle(self, *args, names, **options):
        clusters = SlurmCluster.objects.prefetch_related("command_nodes")
        if names:
            clusters = clusters.filter(name__in=names)
        self.stdout.write(json.dumps(services.cluster_export(clusters=clusters), indent=2))
