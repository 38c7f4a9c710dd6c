"""Volume pages: list, create form, detail with live state, attach,
detach and delete."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from projects.services import QuotaExceeded

from .. import vms
from ..vm_forms import AttachServerForm, VolumeForm
from ..vm_models import VolumeState
from .common import (
    record_list,
    attach_errors,
    can_act,
    check_can_act,
    form_error_message,
    quota_context,
    run_request,
    safe_next,
    server_for,
    volume_for,
)

V = VolumeState

VOLUME_SORTS = {"name": "name", "project": "project__slug", "cloud": "cloud__name", "size": "size_gb",
                "state": "state", "server": "server__name", "created": "created"}
ATTACHED = (V.ATTACHING, V.IN_USE, V.DETACHING)


@login_required
def volume_list(request):
    return record_list(request, vms.volumes_visible_to(request.user), states=V, sorts=VOLUME_SORTS,
                       search=lambda q: Q(name__icontains=q) | Q(server__name__icontains=q),
                       templates=("clusters/vms/volume_list.html", "clusters/vms/_volume_table.html"))


@login_required
def volume_row(request, pk):
    """htmx: one row of the list, polled while the volume is busy."""
    return render(request, "clusters/vms/_volume_row.html", {"volume": volume_for(request.user, pk)})


@login_required
def volume_new(request):
    bound = request.method == "POST"
    initial = {name: request.GET[name] for name in ("project", "cloud") if request.GET.get(name)}
    form = VolumeForm(request.POST if bound else None, user=request.user, initial=initial)
    if bound and form.is_valid():
        data = form.cleaned_data
        try:
            volume = vms.volume_request(owner=request.user, project=data["project"], cloud=data["cloud"],
                                        name=data["name"], size_gb=data["size_gb"])
        except QuotaExceeded as exc:
            form.add_error(None, str(exc))
        except ValidationError as exc:
            attach_errors(form, exc)
        else:
            messages.success(request, f"Volume {volume.name} ({volume.size_gb} GB) requested on {volume.cloud.name}.")
            return redirect(volume)
    context = {"form": form, **quota_context(form.selected_project, request.user, "volume")}
    return render(request, "clusters/vms/volume_form.html", context)


def _volume_context(request, volume):
    acting = can_act(request.user, volume)
    allowed = {}
    if acting:
        allowed = {
            "attach": volume.state == V.AVAILABLE and volume.server_id is None,
            "detach": volume.state == V.IN_USE and volume.server_id is not None,
            "delete": volume.state in (V.AVAILABLE, V.ERROR) or (volume.state == V.CREATING and volume.openstack_id),
        }
    server_visible = volume.server_id is not None and vms.servers_visible_to(request.user).filter(
        pk=volume.server_id).exists()
    return {"volume": volume, "busy": volume.is_busy, "can_act": acting, "allowed": allowed,
            "server_visible": server_visible,
            "attach_form": AttachServerForm(user=request.user, volume=volume) if allowed.get("attach") else None}


@login_required
def volume_detail(request, pk):
    volume = volume_for(request.user, pk)
    return render(request, "clusters/vms/volume_detail.html", _volume_context(request, volume))


@login_required
def volume_status(request, pk):
    """htmx: the volume's state, attachment and actions, polled while busy."""
    volume = volume_for(request.user, pk)
    return render(request, "clusters/vms/_volume_status.html", _volume_context(request, volume))


def _acting_volume(request, pk):
    volume = volume_for(request.user, pk)
    check_can_act(request.user, volume)
    return volume


@login_required
@require_POST
def volume_attach(request, pk):
    volume = _acting_volume(request, pk)
    form = AttachServerForm(request.POST, user=request.user, volume=volume)
    if form.is_valid():
        server = server_for(request.user, form.cleaned_data["server"].pk)
        check_can_act(request.user, server)
        run_request(request, lambda: vms.volume_attach_request(volume=volume, server=server, actor=request.user),
                    f"Attaching volume {volume.name} to {server.name}.")
    else:
        form_error_message(request, form)
    return redirect(volume)


@login_required
@require_POST
def volume_detach(request, pk):
    volume = _acting_volume(request, pk)
    server_name = volume.server.name if volume.server else ""
    run_request(request, lambda: vms.volume_detach_request(volume=volume, actor=request.user),
                f"Detaching volume {volume.name} from {server_name}.")
    return redirect(safe_next(request, volume.get_absolute_url()))


@login_required
def volume_delete(request, pk):
    """A confirmation page (GET), then the delete request (POST)."""
    volume = _acting_volume(request, pk)
    if request.method == "POST":
        run_request(request, lambda: vms.volume_delete_request(volume=volume, actor=request.user),
                    f"Volume {volume.name} is being deleted.")
        return redirect(volume)
    return render(request, "clusters/vms/volume_confirm_delete.html",
                  {"volume": volume, "attached": volume.state in ATTACHED})
