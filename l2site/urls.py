from django.contrib import admin
from django.urls import include, path
from social_django import views as social_views

from l2site import accounts, health
from publishing import api
from publishing.urls import program_urlpatterns

# JSON under /api/, the error pages elsewhere
handler400 = "l2site.error_pages.bad_request"
handler403 = "l2site.error_pages.permission_denied"
handler404 = "l2site.error_pages.page_not_found"
handler500 = "l2site.error_pages.server_error"

admin.site.site_header = "L2 administration"
admin.site.site_title = "L2 admin"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("accounts/login/", accounts.LoginView.as_view(), name="login"),
    path("accounts/logout/", accounts.LogoutView.as_view(), name="logout"),
    path("accounts/tokens/", accounts.my_tokens, name="my-tokens"),
    path("accounts/tokens/<int:token_id>/revoke", accounts.revoke_my_token, name="my-token-revoke"),
    # Sign-in with Globus (social-auth-app-django); 404 while GLOBUS_AUTH_CLIENT_ID is unset
    path("auth/", include(([
        path("login/<str:backend>/", accounts.globus_only(social_views.auth), name="begin"),
        path("complete/<str:backend>/", accounts.globus_only(social_views.complete), name="complete"),
    ], "social"))),
    path("admin/", admin.site.urls),
    path("api/v1/programs/<str:ipeid>/inverted", api.report_inverted, name="api-report-inverted"),
    path("api/v1/", include("publishing.urls")),
    path("scans/", include("scanning.urls")),
    path("programs/<str:ipeid>/", include(program_urlpatterns)),
    path("", include("inversions.urls")),
]
