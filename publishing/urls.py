from django.urls import path

from publishing import api, openapi, results_views, views
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
    path("reinvert", views.reinvert, name="program-reinvert"),
    path("republish", views.republish, name="program-republish"),
    path("inversions/<str:inversion_id>/archive", views.archive_inversion, name="inversion-archive"),
    path("inversions/<str:inversion_id>/restore", views.restore_inversion, name="inversion-restore"),
    path("results", results_views.results_card, name="program-results"),
    path("results/<str:inversion_id>/maps/<str:quantity>/<str:tau>.png", results_views.result_map,
         name="program-result-map"),
    path("results/<str:inversion_id>/pixel", results_views.result_pixel, name="program-result-pixel"),
]
