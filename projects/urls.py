from django.urls import path

from . import quota_views, views

app_name = "projects"
urlpatterns = [
    path("", views.project_list, name="list"),
    path("quota-requests/", quota_views.quota_request_list, name="quota-requests"),
    path("quota-requests/<int:pk>/decide/", quota_views.quota_request_decide, name="quota-request-decide"),
    path("<slug:slug>/", views.project_detail, name="detail"),
    path("<slug:slug>/edit/", views.project_edit, name="edit"),
    path("<slug:slug>/invite/", views.invitation_create, name="invite"),
    path("<slug:slug>/invitations/<int:pk>/revoke/", views.invitation_revoke, name="invitation-revoke"),
    path("<slug:slug>/members/<int:pk>/role/", views.membership_role, name="member-role"),
    path("<slug:slug>/members/<int:pk>/remove/", views.membership_remove, name="member-remove"),
    path("<slug:slug>/quotas/<str:resource>/", views.quota_edit, name="quota-edit"),
    path("<slug:slug>/quota-requests/new/", quota_views.quota_request_new, name="quota-request-new"),
]
