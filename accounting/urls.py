from django.urls import path

from . import views

app_name = "reports"
urlpatterns = [
    path("", views.index, name="index"),
    path("projects/<slug:slug>/", views.project_report, name="project"),
    path("site/", views.site_report, name="site"),
    path("me/", views.my_report, name="me"),
]
