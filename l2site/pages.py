"""Answers that explain: a GET on an action's URL, a refused value (shared by every app's views).

:class:`MethodNotAllowedPages` turns Django's empty ``405 Method Not Allowed`` (``require_POST``) on
a dashboard page into a page that says what the URL is for and links back (the API keeps its JSON
answers). :func:`problem` is the page of a refused input (``400``), also read by the HTMX error
handler of the base template (``data-l2-message``).
"""
from __future__ import annotations

from django.shortcuts import render
from django.urls import reverse

#: URL words of the dashboard's actions, as the 405 page names them
ACTIONS = {
    "pick-next": "picks the next program of the queue for you",
    "claim": "claims the program for you",
    "release": "releases your claim",
    "report": "reports the program inverted (the form on the program page)",
    "enqueue": "puts the program in the queue",
    "priority": "sets the program's priority",
    "dequeue": "takes the program out of the queue",
    "retry": "retries the failed step",
    "requeue": "takes the claim back and puts the program in the queue",
    "preprocess": "starts preprocessing",
    "generate": "generates the L2 files",
    "start": "starts a scan",
}


def problem(request, message: str, *, title: str = "Not done", back_url: str | None = None,
            back_label: str = "Back", explanation: str = "", status: int = 400):
    return render(request, "problem.html", {
        "title": title, "message": message, "explanation": explanation,
        "back_url": back_url or reverse("overview"), "back_label": back_label,
    }, status=status)


def _back(path: str) -> tuple[str, str]:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "programs":
        return f"/programs/{parts[1]}/", "Back to the program"
    if parts and parts[0] == "programs":
        return reverse("program-list"), "Back to the programs"
    if parts and parts[0] == "scans":
        return reverse("scan-list"), "Back to the scans"
    return reverse("overview"), "Back to the overview"


class MethodNotAllowedPages:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (response.status_code != 405 or response.content or request.method not in ("GET", "HEAD")
                or request.path.startswith("/api/") or not getattr(request, "user", None)
                or not request.user.is_authenticated):
            return response
        word = [p for p in request.path.split("/") if p][-1:] or [""]
        what = ACTIONS.get(word[0], "does something")
        back_url, back_label = _back(request.path)
        page = problem(
            request, f"This address {what}: it works from its button, not by opening it.",
            title="Use the button", back_url=back_url, back_label=back_label, status=405,
            explanation="Buttons send a form (POST) so that a link, a reload or a search engine never acts for you. "
                        "Go back and press the button there.")
        if response.has_header("Allow"):
            page["Allow"] = response["Allow"]
        return page
