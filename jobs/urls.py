from django.urls import path

from . import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_compose, name="compose"),
    path("new/estimate/", views.job_estimate, name="estimate"),
    path("<int:pk>/", views.job_detail, name="detail"),
    path("<int:pk>/status/", views.job_status, name="status"),
    path("<int:pk>/output/", views.job_output, name="output"),
    path("<int:pk>/cancel/", views.job_cancel, name="cancel"),
    path("<int:pk>/clone/", views.job_clone, name="clone"),
    path("<int:pk>/save-template/", views.template_save, name="save-template"),
]
