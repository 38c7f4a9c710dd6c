from django.urls import path

from . import views

app_name = "clusters"
urlpatterns = [
    path("limits/", views.limits, name="limits"),
    path("<int:pk>/limits/sync/", views.limits_sync, name="limits-sync"),
    path("clouds/<int:pk>/limits/sync/", views.cloud_limits_sync, name="cloud-limits-sync"),
]
