"""Sign-in, sign-out and "My tokens": the account pages of every user.

The login page shows "Sign in with Globus" when ``GLOBUS_AUTH_CLIENT_ID`` is set, and the local
form otherwise (``?local=1`` shows the form beside it, for administrators). Sign-out revokes the
user's Globus tokens before ending the session. "My tokens" lets a signed-in user create and
revoke their own API tokens (the raw token is shown once, in the answer to the POST; only its
SHA-256 is stored, publishing.models.ApiToken).
"""
from __future__ import annotations

import logging
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.validators import MaxLengthValidator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

log = logging.getLogger("l2.auth")
TOKEN_NAME_MAX = 100


class LoginForm(AuthenticationForm):
    """Django's login form, with its user name's length checked before anyone is asked.

    Django sets the field's ``max_length`` but no validator, so a longer name reached the
    backends, and django-axes' failed-login row (``username`` varchar(255)) could not hold
    it: a 500. Too long now is a form error, like any wrong name.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["username"]
        field.validators.append(MaxLengthValidator(field.max_length))


class LoginView(auth_views.LoginView):
    authentication_form = LoginForm

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        globus = settings.GLOBUS_AUTH_ENABLED
        context["globus_enabled"] = globus
        context["show_local_form"] = not globus or bool(self.request.GET.get("local")) or bool(
            context["form"].errors)
        return context


class LogoutView(auth_views.LogoutView):
    def post(self, request, *args, **kwargs):
        from l2site.globus_auth import revoke_tokens

        revoke_tokens(request.user)
        return super().post(request, *args, **kwargs)


def globus_only(view):
    """The social-auth views answer 404 while Globus sign-in is not configured."""

    @wraps(view)  # keeps csrf_exempt, login_required = False
    def wrapped(request, *args, **kwargs):
        if not settings.GLOBUS_AUTH_ENABLED:
            raise Http404("Sign-in with Globus is not configured.")
        return view(request, *args, **kwargs)

    return wrapped


@require_http_methods(["GET", "POST"])
def my_tokens(request):
    from publishing.models import ApiToken

    raw = None
    error = ""
    name = ""
    if request.method == "POST":
        name = (request.POST.get("name") or "").strip()
        if not name:
            error = "Give the token a name: who or what will use it."
        elif len(name) > TOKEN_NAME_MAX:
            error = f"The name is at most {TOKEN_NAME_MAX} characters."
        else:
            token, raw = ApiToken.issue(name=name, user=request.user)
            log.info("API token #%d (%s…) created by %s on My tokens", token.pk, token.prefix, request.user.get_username())
            name = ""
    tokens = ApiToken.objects.filter(user=request.user).order_by("revoked_at", "-created_at")
    response = render(request, "registration/my_tokens.html", {
        "tokens": tokens, "new_token": raw, "error": error, "name": name, "nav": "tokens",
        "max_name": TOKEN_NAME_MAX,
    }, status=400 if error else 200)
    add_never_cache_headers(response)  # the new token is in this answer only
    return response


@require_POST
def revoke_my_token(request, token_id: int):
    from publishing.models import ApiToken

    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)  # someone else's: 404
    if token.revoked_at is None:
        token.revoke()
        log.info("API token #%d (%s…) revoked by %s on My tokens", token.pk, token.prefix, request.user.get_username())
        messages.success(request, f"Token “{token.name}” ({token.prefix}…) revoked: it no longer works.")
    else:
        messages.info(request, f"Token “{token.name}” was already revoked.")
    return redirect("my-tokens")
