from django.urls import path

from publishing import api, openapi

urlpatterns = [
    path("openapi.json", openapi.openapi, name="api-openapi"),
    path("programs", api.programs, name="api-programs"),
    path("programs/<str:ipeid>", api.program, name="api-program"),
]
