"""SSH public keys users keep in their profile. A key becomes a nova
keypair on a cloud the first time a server is booted with it
(`servers.server_boot_run`); deleting the key removes those keypairs too,
so a key the user withdrew cannot be injected into later servers."""
from django.db import transaction

from ..vm_models import Server, SSHKey
from .common import _on_commit


@transaction.atomic
def ssh_key_add(*, owner, name, public_key):
    """Validate (ValidationError naming `name` or `public_key`) and store."""
    key = SSHKey(owner=owner, name=(name or "").strip(), public_key=public_key or "")
    key.full_clean()
    key.save()
    return key


@transaction.atomic
def ssh_key_delete(*, key):
    """Delete the key; its keypairs go from every cloud it was used on.
    Servers booted with it keep it (it is in their disk already)."""
    from .. import tasks

    used_on = {}
    for cloud_id, project_id in Server.objects.filter(ssh_key=key).values_list("cloud_id", "project_id"):
        used_on.setdefault(cloud_id, project_id)
    nova_name = key.nova_name
    key.delete()
    for cloud_id, project_id in used_on.items():
        _on_commit(tasks.keypair_delete, cloud_id, project_id, nova_name)
