from celery import shared_task


@shared_task
def sync_partitions(cluster_id):
    from . import services
    from .models import SlurmCluster

    cluster = SlurmCluster.objects.filter(pk=cluster_id, enabled=True).first()
    if cluster is not None:
        return [p.name for p in services.partitions_sync(cluster=cluster)]


@shared_task
def sync_all_partitions():
    from .models import SlurmCluster

    for cluster_id in SlurmCluster.objects.filter(enabled=True).values_list("pk", flat=True):
        sync_partitions.delay(cluster_id)


@shared_task
def sync_slurm_limits():
    """Periodic: push every active project's accounts and core-hour limits."""
    from .limits import slurm_limits_sync
    from .models import SlurmCluster

    fixed = 0
    for cluster in SlurmCluster.objects.filter(enabled=True):
        fixed += len(slurm_limits_sync(cluster=cluster))
    return fixed


@shared_task
def sync_openstack_quotas():
    """Periodic: create missing OpenStack projects and push every active
    project's limits to each enabled cloud's quota sets. A cloud that cannot
    be reached is logged and skipped; returns the number of differences fixed."""
    import logging

    from .backends.base import BackendError
    from .clouds import openstack_quotas_sync
    from .models import Cloud

    fixed = 0
    for cloud in Cloud.objects.filter(enabled=True):
        try:
            fixed += sum(1 for d in openstack_quotas_sync(cloud) if not d.error)
        except BackendError as exc:
            logging.getLogger(__name__).warning("OpenStack quota sync of %s failed: %s", cloud.name, exc)
    return fixed


@shared_task
def sync_catalogs():
    """Periodic: pull every enabled cloud's flavors and images into the
    portal's catalog (`catalog.catalog_sync`). A cloud that cannot be reached
    is logged and skipped; returns {cloud name: counts or error text}.

    Beat entry (portal/settings.py, CELERY_BEAT_SCHEDULE):
        "sync-openstack-catalogs": {"task": "clusters.tasks.sync_catalogs", "schedule": timedelta(hours=1)}
    """
    import logging

    from .backends.base import BackendError
    from .catalog import catalog_sync
    from .models import Cloud

    done = {}
    for cloud in Cloud.objects.filter(enabled=True):
        try:
            done[cloud.name] = catalog_sync(cloud)
        except BackendError as exc:
            logging.getLogger(__name__).warning("OpenStack catalog sync of %s failed: %s", cloud.name, exc)
            done[cloud.name] = str(exc)
    return done


# --------------------------------------------------------------------------- servers and volumes
# Thin: each calls one function of clusters.vms. A cloud that cannot be
# reached (BackendUnavailable) is retried with backoff; after the last try
# the record is marked failed and its quota given back. While the cloud
# works on a server, `server_watch` re-reads it every few seconds, so pages
# show progress without waiting for the periodic sync.

WATCH_INTERVAL = 3  # seconds between reads of a busy server
WATCH_POLLS = 200  # ~10 minutes
RETRIES = 5


def _retry_or(task, exc, give_up):
    if task.request.is_eager or task.request.retries >= RETRIES:
        give_up(str(exc))
        return None
    raise task.retry(exc=exc, countdown=min(2 ** task.request.retries * 5, 120), max_retries=RETRIES)


def _unavailable():
    from .backends.base import BackendUnavailable

    return BackendUnavailable


@shared_task(bind=True, max_retries=RETRIES)
def server_boot(self, server_id):
    from . import vms

    try:
        vms.server_boot_run(server_id=server_id)
    except _unavailable() as exc:
        return _retry_or(self, exc, lambda error: vms.server_boot_gave_up(server_id=server_id, error=error))
    server_watch.apply_async((server_id,), countdown=WATCH_INTERVAL)


def _call(task, function, watch_id=None, **kwargs):
    import logging

    try:
        function(**kwargs)
    except _unavailable() as exc:
        return _retry_or(task, exc, lambda error: logging.getLogger(__name__).warning(
            "%s(%s) gave up: %s", function.__name__, kwargs, error))
    if watch_id is not None:
        server_watch.apply_async((watch_id,), countdown=WATCH_INTERVAL)


@shared_task(bind=True, max_retries=RETRIES)
def server_action(self, server_id, action, hard=False):
    from . import vms

    _call(self, vms.server_action_run, server_id, server_id=server_id, action=action, hard=hard)


@shared_task(bind=True, max_retries=RETRIES)
def server_resize(self, server_id):
    from . import vms

    _call(self, vms.server_resize_run, server_id, server_id=server_id)


@shared_task(bind=True, max_retries=RETRIES)
def server_confirm_resize(self, server_id):
    from . import vms

    _call(self, vms.server_confirm_resize_run, server_id, server_id=server_id)


@shared_task(bind=True, max_retries=RETRIES)
def server_delete(self, server_id):
    from . import vms

    _call(self, vms.server_delete_run, server_id, server_id=server_id)


@shared_task(bind=True)
def server_watch(self, server_id, polls=0):
    """Re-read a busy server until it settles (not in eager mode: there a
    countdown would turn into a tight loop; tests refresh explicitly)."""
    from . import vms

    try:
        server = vms.server_refresh(server_id=server_id)
    except _unavailable():
        server = None
    if self.request.is_eager or polls >= WATCH_POLLS:
        return
    if server is None or server.is_busy:
        server_watch.apply_async((server_id, polls + 1), countdown=WATCH_INTERVAL)


@shared_task(bind=True, max_retries=RETRIES)
def floating_ip_allocate(self, fip_id):
    from . import vms
    from .models import FloatingIP

    server_id = FloatingIP.objects.filter(pk=fip_id).values_list("server_id", flat=True).first()
    _call(self, vms.floating_ip_allocate_run, server_id, fip_id=fip_id)


@shared_task(bind=True, max_retries=RETRIES)
def floating_ip_release(self, fip_id):
    from . import vms

    _call(self, vms.floating_ip_release_run, fip_id=fip_id)


@shared_task(bind=True, max_retries=RETRIES)
def volume_create(self, volume_id):
    from . import vms

    try:
        vms.volume_create_run(volume_id=volume_id)
    except _unavailable() as exc:
        return _retry_or(self, exc, lambda error: vms.volume_gave_up(volume_id=volume_id, error=error))
    volume_watch.apply_async((volume_id,), countdown=WATCH_INTERVAL)


@shared_task(bind=True, max_retries=RETRIES)
def volume_attach(self, volume_id):
    from . import vms

    _call(self, vms.volume_attach_run, volume_id=volume_id)
    volume_watch.apply_async((volume_id,), countdown=WATCH_INTERVAL)


@shared_task(bind=True, max_retries=RETRIES)
def volume_detach(self, volume_id):
    from . import vms

    _call(self, vms.volume_detach_run, volume_id=volume_id)
    volume_watch.apply_async((volume_id,), countdown=WATCH_INTERVAL)


@shared_task(bind=True, max_retries=RETRIES)
def volume_delete(self, volume_id):
    from . import vms

    _call(self, vms.volume_delete_run, volume_id=volume_id)
    volume_watch.apply_async((volume_id,), countdown=WATCH_INTERVAL)


@shared_task(bind=True)
def volume_watch(self, volume_id, polls=0):
    from . import vms

    try:
        volume = vms.volume_refresh(volume_id=volume_id)
    except _unavailable():
        volume = None
    if self.request.is_eager or polls >= WATCH_POLLS:
        return
    if volume is None or volume.is_busy:
        volume_watch.apply_async((volume_id, polls + 1), countdown=WATCH_INTERVAL)


@shared_task
def sync_clouds():
    """Periodic: mirror every live server and volume of each enabled cloud
    (one list call per cloud and project). Returns {cloud: counts or error}."""
    import logging

    from .backends.base import BackendError
    from .models import Cloud
    from .vms import cloud_sync

    done = {}
    for cloud in Cloud.objects.filter(enabled=True):
        try:
            done[cloud.name] = cloud_sync(cloud)
        except BackendError as exc:
            logging.getLogger(__name__).warning("OpenStack sync of %s failed: %s", cloud.name, exc)
            done[cloud.name] = str(exc)
    return done


@shared_task(bind=True, max_retries=RETRIES)
def keypair_delete(self, cloud_id, project_id, nova_name):
    """Remove a withdrawn SSH key's keypair from a cloud (idempotent)."""
    from projects.models import Project

    from .clouds import openstack_client
    from .models import Cloud

    def delete():
        openstack_client(Cloud.objects.get(pk=cloud_id), Project.objects.get(pk=project_id)).delete_keypair(nova_name)

    try:
        delete()
    except _unavailable() as exc:
        import logging

        return _retry_or(self, exc, lambda error: logging.getLogger(__name__).warning(
            "keypair %s on cloud %s not deleted: %s", nova_name, cloud_id, error))
