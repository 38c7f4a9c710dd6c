"""Cluster-side rules: which client talks to a cluster, partition sync,
POSIX names, bwVisu-style JSON import/export."""
import logging
import time

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .backends.base import BackendUnavailable
from .backends.slurm import SlurmClient
from .backends.ssh import SSHPool, pool_for
from .models import CommandNode, Partition, PosixAccount, SlurmCluster, posix_name

log = logging.getLogger(__name__)


def slurm_client(cluster):
    """The (pooled, per-process) client of a cluster. The pool is keyed by
    the cluster's connection settings, so an edit in the admin takes effect."""
    nodes = [(n.host, n.port) for n in cluster.command_nodes.filter(enabled=True)]
    if not nodes:
        # Like every node being down: submissions retry, then fail clearly.
        raise BackendUnavailable(f"Cluster {cluster.name} has no enabled command node.")
    key = ("slurm", cluster.pk, tuple(nodes), cluster.ssh_user, hash(cluster.ssh_private_key),
           hash(cluster.known_hosts), cluster.slurm_conf)
    env = {"SLURM_CONF": cluster.slurm_conf} if cluster.slurm_conf else None
    pool = pool_for(key, lambda: SSHPool(
        nodes=nodes, username=cluster.ssh_user, private_key_text=cluster.ssh_private_key,
        known_hosts_text=cluster.known_hosts, env=env, on_node_status=_node_reporter(cluster.pk),
    ))
    return SlurmClient(pool, sudo_mode=cluster.sudo_mode, slurm_conf=cluster.slurm_conf)


def posix_username(*, user, cluster):
    """The user's POSIX name on `cluster`, or a ValidationError telling them
    to ask staff for one. Asks the database unless the cluster was looked
    up knowing it (jobs.selectors.cluster_for_submission)."""
    known = getattr(cluster, "posix_names_known", {})
    if user.pk in known:
        username = known[user.pk]
    else:
        username = PosixAccount.objects.filter(user=user, cluster=cluster).values_list("username", flat=True).first()
    if username is None:
        raise ValidationError(
            {"cluster": f"You have no user name on {cluster.name} yet: ask the staff to set one up."}
        )
    return username


@transaction.atomic
def posix_accounts_from_claims(*, user, claims):
    """Give `user` a POSIX name on every enabled cluster where they have none,
    from the claim named by NEPHELE_POSIX_USERNAME_CLAIM (e.g. `uid`). A name
    already taken on a cluster is left alone (and logged): it is never moved
    from one person to another. Users cannot choose their own name, since
    that would let them act as someone else on the cluster."""
    from django.conf import settings

    claim = getattr(settings, "NEPHELE_POSIX_USERNAME_CLAIM", "")
    name = claims.get(claim) if claim else None
    if not isinstance(name, str) or not posix_name.regex.match(name) or name == "root":
        return []
    made = []
    for cluster in SlurmCluster.objects.filter(enabled=True).exclude(posix_accounts__user=user):
        if PosixAccount.objects.filter(cluster=cluster, username=name).exists():
            log.warning("POSIX name %r on %s is taken: not given to %s", name, cluster, user)
            continue
        made.append(PosixAccount.objects.create(user=user, cluster=cluster, username=name,
                                                source=PosixAccount.Source.CLAIM))
    return made


def user_workdir(*, cluster, username):
    return f"{cluster.work_prefix.rstrip('/')}/{username}"


def partitions_sync(*, cluster):
    """Pull partitions and their limits from the cluster; drop vanished ones.
    (SSH outside the transaction, so a failed node's error is kept.)"""
    infos = slurm_client(cluster).partitions()
    seen = []
    with transaction.atomic():
        for info in infos:
            Partition.objects.update_or_create(
                cluster=cluster, name=info.name,
                defaults={
                    "is_default": info.is_default, "state": info.state,
                    "max_time_minutes": info.max_time_minutes, "default_time_minutes": info.default_time_minutes,
                    "max_nodes": info.max_nodes, "total_nodes": info.total_nodes, "total_cpus": info.total_cpus,
                    "max_cpus_per_node": info.max_cpus_per_node, "max_mem_per_node_mb": info.max_mem_per_node_mb,
                },
            )
            seen.append(info.name)
        cluster.partitions.exclude(name__in=seen).delete()
        cluster.last_sync = timezone.now()
        cluster.save(update_fields=["last_sync"])
    return cluster.partitions.all()


def node_report(*, cluster, host, port, error=None):
    """Record which command node answered or failed (shown in the admin)."""
    fields = {"last_error": str(error), "last_error_at": timezone.now()} if error else {"last_ok_at": timezone.now()}
    CommandNode.objects.filter(cluster=cluster, host=host, port=port).update(**fields)


NODE_OK_EVERY = 60  # seconds between `last_ok_at` updates of a node that keeps answering


def _node_reporter(cluster_id):
    """The pool's on_node_status callback: every failure is recorded; a
    success only after a failure or NODE_OK_EVERY seconds (not per command)."""
    last_ok = {}

    def report(node, error):
        host, port = node
        now = time.monotonic()
        if error is None:
            if now - last_ok.get(node, -NODE_OK_EVERY) < NODE_OK_EVERY:
                return
            last_ok[node] = now
        else:
            last_ok.pop(node, None)
        node_report(cluster=cluster_id, host=host, port=port, error=error)

    return report


# --- bwVisu JSON ---------------------------------------------------------------


def _host_port(entry, default_port=22):
    """"host", "host:port", {"host", "port"} or bwVisu's {"ip", "user", "port"}."""
    if isinstance(entry, str):
        host, _, port = entry.partition(":")
    else:
        host, port = entry.get("host") or entry.get("ip"), entry.get("port")
    if not host:
        raise ValueError(f"command node {entry!r} has no host")
    return host, int(port or default_port)


def _port_range(value):
    """"50000-60000", or bwVisu's {"min": 50000, "max": 60000}."""
    if isinstance(value, dict):
        return f"{int(value['min'])}-{int(value['max'])}"
    return value


@transaction.atomic
def cluster_import(*, data, ssh_private_key="", known_hosts=""):
    """Create or update clusters from a bwVisu-style document:
    {"clusters": [{"name", "command-nodes": ["host:port" | {"host","port"}],
      "gateway-nodes": [...], "home-prefix", "port-range", "ssh-user", "sudo-mode", "slurm-conf"}]}
    (a single cluster object or a list is accepted too, and the middleware's
    own spellings: {"ip", "port"} nodes, "bwvisu-home-prefix", a {"min", "max"}
    port range). Keys are given separately: secrets do not belong in a shared
    JSON file. All or nothing: any invalid entry changes nothing."""
    items = data.get("clusters", [data]) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValidationError('Invalid document: expected a cluster object, {"clusters": [...]} or a list.')
    clusters = []
    for item in items:
        try:
            name = item["name"]
            nodes = [_host_port(n) for n in item["command-nodes"]]
            if not nodes:
                raise ValueError("'command-nodes' is empty")
            port_range = _port_range(item.get("port-range"))
        except KeyError as exc:
            raise ValidationError(f"Invalid cluster entry {item!r}: missing {exc}") from exc
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValidationError(f"Invalid cluster entry {item!r}: {exc}") from exc
        cluster, created = SlurmCluster.objects.get_or_create(
            name=name,
            defaults={"ssh_user": item.get("ssh-user", "nephele"), "ssh_private_key": ssh_private_key,
                      "known_hosts": known_hosts},
        )
        cluster.ssh_user = item.get("ssh-user", cluster.ssh_user)
        cluster.sudo_mode = item.get("sudo-mode", cluster.sudo_mode)
        cluster.submit_lanes = item.get("submit-lanes", cluster.submit_lanes)
        cluster.work_prefix = item.get("home-prefix", item.get("bwvisu-home-prefix", cluster.work_prefix))
        cluster.user_dirs = item.get("user-dirs", cluster.user_dirs)
        cluster.slurm_conf = item.get("slurm-conf", cluster.slurm_conf)
        cluster.gateway_nodes = item.get("gateway-nodes", cluster.gateway_nodes)
        cluster.port_range = cluster.port_range if port_range is None else port_range
        cluster.description = item.get("description", cluster.description)
        if ssh_private_key:
            cluster.ssh_private_key = ssh_private_key
        if known_hosts:
            cluster.known_hosts = known_hosts
        try:
            cluster.full_clean()
        except ValidationError as exc:
            raise ValidationError(f"Cluster {name}: " + "; ".join(
                f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())) from exc
        cluster.save()
        for node in cluster.command_nodes.all():
            if (node.host, node.port) not in nodes:
                node.delete()
        for position, (host, port) in enumerate(nodes):
            CommandNode.objects.update_or_create(
                cluster=cluster, host=host, port=port, defaults={"position": position}
            )
        clusters.append(cluster)
    return clusters


def cluster_export(*, clusters):
    """The bwVisu-style document for `clusters` (without secrets)."""
    return {
        "clusters": [
            {
                "name": c.name,
                "description": c.description,
                "command-nodes": [f"{n.host}:{n.port}" for n in c.command_nodes.all()],
                "gateway-nodes": c.gateway_nodes,
                "home-prefix": c.work_prefix,
                "user-dirs": c.user_dirs,
                "port-range": c.port_range,
                "ssh-user": c.ssh_user,
                "sudo-mode": c.sudo_mode,
                "submit-lanes": c.submit_lanes,
                "slurm-conf": c.slurm_conf,
            }
            for c in clusters
        ]
    }
