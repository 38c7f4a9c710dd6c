from rest_framework.routers import DefaultRouter

from .api import JobTemplateViewSet, JobViewSet

router = DefaultRouter()
router.register("jobs", JobViewSet, basename="job")
router.register("job-templates", JobTemplateViewSet, basename="jobtemplate")
urlpatterns = router.urls
