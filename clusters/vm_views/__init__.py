"""Pages for servers, volumes and SSH keys (namespace `vms`, see
clusters/vm_urls.py). Order in every view: tenant lookup (404), permission
to act (403), input validation (form errors), then one `clusters.vms`
request; the cloud work happens in Celery tasks, and the pages poll small
htmx fragments while a record is busy."""
from .common import quota_left  # noqa: F401
from .servers import (  # noqa: F401
    floating_ip_add,
    floating_ip_release,
    server_attach,
    server_choices,
    server_delete,
    server_detail,
    server_list,
    server_new,
    server_power,
    server_protect,
    server_resize,
    server_row,
    server_status,
)
from .ssh_keys import ssh_key_delete, ssh_key_list  # noqa: F401
from .volumes import (  # noqa: F401
    volume_attach,
    volume_delete,
    volume_detach,
    volume_detail,
    volume_list,
    volume_new,
    volume_row,
    volume_status,
)
