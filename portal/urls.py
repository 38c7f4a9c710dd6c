from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from projects import views as project_views

from . import views
from .api import MeView

api_v1 = [
    path("me/", MeView.as_view(), name="me"),
    path("", include("projects.api_urls")),
    path("", include("jobs.api_urls")),
    path("", include("accounting.api_urls")),
    path("", include("clusters.vm_api_urls")),
]

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("projects/", include("projects.urls")),
    path("jobs/", include("jobs.urls")),
    path("clusters/", include("clusters.urls")),
    path("", include("clusters.vm_urls")),
    path("reports/", include("accounting.urls")),
    path("invitations/<str:token>/", project_views.invitation_accept, name="invitation"),
    # One login page for everything: the admin's own form would bypass the
    # failed-login throttling and the OIDC button.
    path("admin/login/", views.admin_login),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("account/api-token/", views.api_token, name="api-token"),
    path("login/refused/", views.login_refused, name="login_refused"),
    path("api/v1/", include((api_v1, "api"), namespace="api")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
]

admin.site.site_header = "Nephele administration"
admin.site.site_title = "Nephele admin"
