"""Pages for servers, volumes and SSH keys (namespace `vms`)."""
app_name = "vms"

urlpatterns = []
