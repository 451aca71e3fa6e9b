from django.urls import path

from scanning import views

urlpatterns = [
    path("", views.scan_list, name="scan-list"),
    path("start", views.scan_start, name="scan-start"),
    path("<int:pk>/", views.scan_detail, name="scan-detail"),
    path("<int:pk>/progress", views.scan_progress, name="scan-progress"),
]
