from django.urls import path

from dashboard import api, metrics, views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("threads/", views.threads, name="threads"),
    path("threads/<slug:source>/<path:thread_id>/", views.thread, name="thread"),
    path("checkpoints/<int:pk>/", views.checkpoint, name="checkpoint"),
    path("api/threads/", api.threads, name="api-threads"),
    path("api/threads/<slug:source>/<path:thread_id>/", api.thread, name="api-thread"),
    path("api/summary/", api.summary, name="api-summary"),
    path("metrics", metrics.metrics, name="metrics"),
]
