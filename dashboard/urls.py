from django.contrib import admin
from django.urls import include, path

from dashboard import views

urlpatterns = [
    # Before the admin's own login: a logged-in viewer is told the admin is staff only.
    path("admin/login/", views.admin_login),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("storage.urls")),
    path("", include("dashboard.pages_urls")),
]

handler404 = "dashboard.views.not_found"
handler500 = "dashboard.views.server_error"
