"""/api/v1/servers/, /api/v1/volumes/ and /api/v1/ssh-keys/ (see docs/vms.md, "API")."""
from rest_framework.routers import DefaultRouter

from .vm_api import ServerViewSet, SSHKeyViewSet, VolumeViewSet

router = DefaultRouter()
router.register("servers", ServerViewSet, basename="server")
router.register("volumes", VolumeViewSet, basename="volume")
router.register("ssh-keys", SSHKeyViewSet, basename="sshkey")
urlpatterns = router.urls
