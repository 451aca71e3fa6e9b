"""The site's URLs plus the dashboard benchmark's two reference views.

``/bench/bare`` is the smallest Django view: the baseline of the list page's throughput target.

``/bench/floor`` is what the list page costs at least in its steady state: behind the same
middleware and the same sign-in as the list, it runs the list view's own SQL statements, exactly
as the list view sends them once its caches are warm (captured once per process; with a kept
page, the change marker alone), fetches their rows, and answers the list page's own bytes. It
leaves out only the Python that builds those statements and that page: the ORM, the filter form,
the paginator, the cache and the templates.
It is not a baseline of any target; it shows how much of the gap to the bare view is the
database's and the wire's, and how much is ours.
"""
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpResponse
from django.test.utils import CaptureQueriesContext
from django.urls import include, path, resolve


@login_not_required
def bare(request):
    return HttpResponse("ok")


_floor: dict = {}


def floor(request):
    """The list page's statements and bytes, with none of the work that makes them (see the module)."""
    if "body" not in _floor:
        view = resolve("/programs/").func
        # the list's steady state: the filter menus are cached on the first request, the count
        # and the page are kept from their second making on; capture until two requests send the same SQL
        statements = None
        for _ in range(5):
            with CaptureQueriesContext(connection) as ctx:
                response = view(request)
            assert response.status_code == 200, response.status_code
            previous, statements = statements, [q["sql"] for q in ctx.captured_queries]
            if statements == previous:
                break
        _floor["statements"] = statements
        _floor["body"] = response.content
        _floor["content_type"] = response["Content-Type"]
    with connection.cursor() as cursor:
        for sql in _floor["statements"]:
            cursor.execute(sql)
            cursor.fetchall()
    return HttpResponse(_floor["body"], content_type=_floor["content_type"])


urlpatterns = [
    path("bench/bare", bare, name="bench-bare"),
    path("bench/floor", floor, name="bench-floor"),
    path("", include("l2site.urls")),
]
