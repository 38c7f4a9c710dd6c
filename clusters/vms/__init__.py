"""Servers, volumes and floating IPs on the clouds: the domain rules.

Views and the API call the `*_request` functions: they validate, reserve
the quota (one locked step, before anything reaches the cloud), record the
intent and hand the slow part to a Celery task on commit. The tasks call
the `*_run` functions, which talk to the cloud through the backend client
and record what it answered; `server_refresh` / `cloud_sync` mirror the
cloud's state back.

Quota bookkeeping lives on the records themselves (`quota_reserved`,
`quota_used`, {resource: amount}) and moves only through `_commit` and
`_release` (common.py), inside the same transaction as the record's row
lock, so every path (success, refusal, crash and retry, deletion outside
the portal) leaves the project's counters exact.

    common.py        quota on records, validation, events, the cloud client
    servers.py       server requests, cloud work, `server_apply`
    floating_ips.py  floating IP requests and cloud work
    volumes.py       volume requests, cloud work, `volume_apply`
    keys.py          users' SSH keys and their keypairs on the clouds
    sync.py          periodic mirror, recount, tenant-filtered reads
"""
from .common import RequestRefused, clouds_for, validate_user_data  # noqa: F401
from .floating_ips import (  # noqa: F401
    floating_ip_allocate_run,
    floating_ip_release_request,
    floating_ip_release_run,
    floating_ip_request,
)
from .keys import ssh_key_add, ssh_key_delete  # noqa: F401
from .servers import (  # noqa: F401
    ACTIONS,
    server_action_request,
    server_action_run,
    server_apply,
    server_boot_gave_up,
    server_boot_run,
    server_confirm_resize_run,
    server_delete_request,
    server_delete_run,
    server_protect,
    server_refresh,
    server_request,
    server_resize_request,
    server_resize_run,
    server_validate,
)
from .sync import (  # noqa: F401
    cloud_sync,
    image_choices,
    profile_choices,
    register_recounters,
    servers_visible_to,
    ssh_keys_of,
    volumes_visible_to,
)
from .volumes import (  # noqa: F401
    volume_apply,
    volume_attach_request,
    volume_attach_run,
    volume_create_run,
    volume_delete_request,
    volume_delete_run,
    volume_detach_request,
    volume_detach_run,
    volume_gave_up,
    volume_refresh,
    volume_request,
)
