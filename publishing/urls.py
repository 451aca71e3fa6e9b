from django.urls import path

from publishing import api, openapi, views
from scanning import api as scanning_api

#: /api/v1/…
urlpatterns = [
    path("openapi.json", openapi.openapi, name="api-openapi"),
    path("programs", api.programs, name="api-programs"),
    path("programs/<str:ipeid>", api.program, name="api-program"),
    path("inversions", api.inversions, name="api-inversions"),
    path("inversions/<str:inversion_id>", api.inversion, name="api-inversion"),
    path("scans", scanning_api.scans, name="api-scans"),
    path("scans/<int:pk>", scanning_api.scan, name="api-scan"),
]

#: /programs/<ipeid>/… on the dashboard
program_urlpatterns = [
    path("publishing", views.program_publishing, name="program-publishing"),
    path("generate", views.generate, name="program-generate"),
    path("publish", views.publish_confirm, name="program-publish"),
]
