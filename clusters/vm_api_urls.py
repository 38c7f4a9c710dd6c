"""/api/v1/servers/ and /api/v1/volumes/."""
urlpatterns = []
