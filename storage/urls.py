from django.urls import path

from storage import views

urlpatterns = [
    path("blobs/<int:pk>/download", views.download, name="blob-download"),
    path("blobs/stream/<str:token>", views.stream, name="blob-stream"),
    path("storage/bucket/", views.bucket, name="storage-bucket"),
]
