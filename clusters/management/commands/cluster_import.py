"""Load Slurm clusters from a bwVisu-style JSON file (see docs/clusters.md)."""
import json
import sys
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from clusters import services


class Command(BaseCommand):
    help = "Create or update Slurm clusters from a bwVisu-style JSON file."
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("file", help="JSON file, or - for standard input")
        parser.add_argument("--ssh-key", help="Private key file of the service user")
        parser.add_argument("--known-hosts", help="known_hosts file with the command nodes' host keys")

    def handle(self, *args, file, ssh_key=None, known_hosts=None, **options):
        try:
            text = (options.get("stdin") or sys.stdin).read() if file == "-" else Path(file).read_text()
            data = json.loads(text)
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from exc
        try:
            key = Path(ssh_key).read_text() if ssh_key else ""
            hosts = Path(known_hosts).read_text() if known_hosts else ""
        except OSError as exc:
            raise CommandError(f"Cannot read {exc.filename}: {exc.strerror}") from exc
        try:
            clusters = services.cluster_import(data=data, ssh_private_key=key, known_hosts=hosts)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        for cluster in clusters:
            nodes = ", ".join(str(n) for n in cluster.command_nodes.all())
            self.stdout.write(f"{cluster.name}: command nodes {nodes}")
