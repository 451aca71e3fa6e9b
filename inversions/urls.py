from django.urls import path

from inversions import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("programs/", views.program_list, name="program-list"),
    path("programs/pick-next", views.pick_next, name="pick-next"),
    path("programs/<str:ipeid>/", views.program_detail, name="program-detail"),
    path("programs/<str:ipeid>/claim", views.claim, name="program-claim"),
    path("programs/<str:ipeid>/release", views.release, name="program-release"),
]
