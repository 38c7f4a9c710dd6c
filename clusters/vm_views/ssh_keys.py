"""The user's SSH keys: list, add, delete."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render

from .. import vms
from ..vm_forms import SSHKeyForm
from ..vm_models import ServerState
from .common import attach_errors


def _keys_of(user):
    live = Q(servers__state__in=[s for s in ServerState.values if s != ServerState.DELETED])
    return vms.ssh_keys_of(user).annotate(server_count=Count("servers", filter=live)).order_by("name")


@login_required
def ssh_key_list(request):
    """The list and, on the same page, the form to add a key."""
    form = SSHKeyForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        name = form.cleaned_data["name"]
        try:
            key = vms.ssh_key_add(owner=request.user, name=name, public_key=form.cleaned_data["public_key"])
        except ValidationError as exc:
            attach_errors(form, exc)
        except IntegrityError:  # the same name added at the same moment
            form.add_error("name", f"You already have a key named {name}.")
        else:
            messages.success(request, f"SSH key {key.name} added.")
            return redirect("vms:ssh-keys")
    return render(request, "clusters/vms/ssh_keys.html", {"keys": _keys_of(request.user), "form": form})


@login_required
def ssh_key_delete(request, pk):
    """A confirmation page (GET), then the deletion (POST): the key's
    keypairs leave the clouds; servers booted with it keep it."""
    key = get_object_or_404(_keys_of(request.user), pk=pk)
    if request.method == "POST":
        vms.ssh_key_delete(key=key)
        messages.success(request, f"SSH key {key.name} deleted.")
        return redirect("vms:ssh-keys")
    return render(request, "clusters/vms/ssh_key_confirm_delete.html", {"key": key})
