from django.urls import path

from checkpoints.jobs import kinds
from dashboard import api, links, maintenance, metrics, sources, views  # noqa: F401 (links registers <thread_id:>)

urlpatterns = [
    path("", views.overview, name="overview"),
    path("threads/", views.threads, name="threads"),
    path("threads/<slug:source>/<thread_id:thread_id>/", views.thread, name="thread"),
    # Thread ids "." and "..", which no browser keeps as a path segment: ?thread_id=..
    path("threads/<slug:source>/", views.thread_by_query, name="thread-by-query"),
    path("checkpoints/<int:pk>/", views.checkpoint, name="checkpoint"),
    path("maintenance/", maintenance.index, name="maintenance"),
    *[path(f"maintenance/{kind}/preview", maintenance.preview, {"kind": kind}, name=f"maintenance-{kind}-preview")
      for kind in kinds(previewed=True)],
    path("maintenance/runs/<int:pk>/", maintenance.run_detail, name="maintenance-run"),
    path("maintenance/runs/<int:pk>/progress", maintenance.run_progress, name="maintenance-run-progress"),
    path("maintenance/runs/<int:pk>/confirm", maintenance.run_confirm, name="maintenance-run-confirm"),
    path("maintenance/policies/<str:kind>/new", maintenance.policy_new, name="maintenance-policy-new"),
    path("maintenance/policies/<int:pk>/toggle", maintenance.policy_toggle, name="maintenance-policy-toggle"),
    path("maintenance/policies/<int:pk>/delete", maintenance.policy_delete, name="maintenance-policy-delete"),
    path("sources/", sources.index, name="sources"),
    path("sources/new", sources.new, name="source-new"),
    path("sources/<int:pk>/edit", sources.edit, name="source-edit"),
    path("sources/<int:pk>/toggle", sources.toggle, name="source-toggle"),
    path("sources/<int:pk>/remove", sources.remove, name="source-remove"),
    path("api/threads/", api.threads, name="api-threads"),
    path("api/threads/<slug:source>/<thread_id:thread_id>/", api.thread, name="api-thread"),
    path("api/threads/<slug:source>/", api.thread_by_query, name="api-thread-by-query"),
    path("api/summary/", api.summary, name="api-summary"),
    path("api/state/", api.state, name="api-state"),
    path("metrics", metrics.metrics, name="metrics"),
]
