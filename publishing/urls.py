from django.urls import path

from publishing import api

urlpatterns = [
    path("programs", api.programs, name="api-programs"),
    path("programs/<str:ipeid>", api.program, name="api-program"),
]
