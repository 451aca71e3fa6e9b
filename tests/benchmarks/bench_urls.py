"""The site's URLs plus ``/bench/bare``: the smallest Django view, the dashboard benchmark's baseline."""
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse
from django.urls import include, path


@login_not_required
def bare(request):
    return HttpResponse("ok")


urlpatterns = [
    path("bench/bare", bare, name="bench-bare"),
    path("", include("l2site.urls")),
]
