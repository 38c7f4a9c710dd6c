"""Pages for servers, volumes and SSH keys (namespace `vms`)."""
from django.urls import path

from . import vm_views as views

app_name = "vms"

urlpatterns = [
    path("servers/", views.server_list, name="server-list"),
    path("servers/new/", views.server_new, name="server-new"),
    path("servers/new/choices/", views.server_choices, name="server-choices"),
    path("servers/new/quota/", views.quota_left, {"kind": "server"}, name="server-quota"),
    path("servers/<int:pk>/", views.server_detail, name="server"),
    path("servers/<int:pk>/status/", views.server_status, name="server-status"),
    path("servers/<int:pk>/row/", views.server_row, name="server-row"),
    path("servers/<int:pk>/start/", views.server_power, {"action": "start"}, name="server-start"),
    path("servers/<int:pk>/stop/", views.server_power, {"action": "stop"}, name="server-stop"),
    path("servers/<int:pk>/reboot/", views.server_power, {"action": "reboot"}, name="server-reboot"),
    path("servers/<int:pk>/resize/", views.server_resize, name="server-resize"),
    path("servers/<int:pk>/floating-ip/", views.floating_ip_add, name="server-floating-ip"),
    path("servers/<int:pk>/floating-ip/release/", views.floating_ip_release, name="server-floating-ip-release"),
    path("servers/<int:pk>/attach/", views.server_attach, name="server-attach"),
    path("servers/<int:pk>/protect/", views.server_protect, name="server-protect"),
    path("servers/<int:pk>/delete/", views.server_delete, name="server-delete"),
    path("volumes/", views.volume_list, name="volume-list"),
    path("volumes/new/", views.volume_new, name="volume-new"),
    path("volumes/new/quota/", views.quota_left, {"kind": "volume"}, name="volume-quota"),
    path("volumes/<int:pk>/", views.volume_detail, name="volume"),
    path("volumes/<int:pk>/status/", views.volume_status, name="volume-status"),
    path("volumes/<int:pk>/row/", views.volume_row, name="volume-row"),
    path("volumes/<int:pk>/attach/", views.volume_attach, name="volume-attach"),
    path("volumes/<int:pk>/detach/", views.volume_detach, name="volume-detach"),
    path("volumes/<int:pk>/delete/", views.volume_delete, name="volume-delete"),
    path("account/ssh-keys/", views.ssh_key_list, name="ssh-keys"),
    path("account/ssh-keys/<int:pk>/delete/", views.ssh_key_delete, name="ssh-key-delete"),
]
