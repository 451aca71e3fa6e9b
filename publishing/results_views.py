"""The inversion's results on the program page: maps at a chosen log tau, and one pixel's profiles.

Thin views over :mod:`publishing.plots` (loaded by the views that draw). The maps are PNG files
drawn once into ``plots/<generation time>/`` next to the generated L2 frames in scratch and served
from there afterwards; a new generation draws them again. A click on a map asks
:func:`result_pixel` (HTMX) for the original and fitted Stokes profiles of every line at that
pixel and its quantities against log tau.
"""
from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.views.decorators.http import require_GET

from inversions import transfers
from inversions.errors import DoNotRetryError
from inversions.models import ObservingProgram
from inversions.states import State
from publishing.models import Inversion, L2File

log = logging.getLogger(__name__)

#: (URL value, shown) of the log tau select; the maps of the first are shown first
LOG_TAUS = (("-1", "−1"), ("-2", "−2"), ("0", "0"))
TAU_VALUES = {v for v, _ in LOG_TAUS}
#: key, label of the four maps (publishing.plots.MAP_QUANTITIES, without loading numpy here)
MAPS = (("temperature", "Temperature"), ("field_strength", "Field strength"), ("inclination", "Inclination"),
        ("velocity", "LOS velocity"))
SHOWN_IN = (State.INVERTED, State.PUBLISHED)


def frames_folder(inversion: Inversion) -> Path | None:
    """The local folder of the generated L2 frames (scratch; else the published copy), or None."""
    candidates = []
    if inversion.l2_path:
        candidates.append((settings.L2_SCRATCH_COLLECTION, inversion.l2_path))
    if inversion.published_collection and inversion.published_path:
        candidates.append((inversion.published_collection, inversion.published_path))
    for collection, path in candidates:
        try:
            folder = transfers.local_folder(collection, path)
        except DoNotRetryError:
            continue
        if folder.is_dir():
            return folder
    return None


def cache_folder(inversion: Inversion, folder: Path) -> Path:
    stamp = inversion.generated_at.strftime("%Y%m%dT%H%M%S%f") if inversion.generated_at else "0"
    return folder / "plots" / stamp


def results_context(program: ObservingProgram, inversion: Inversion | None, tau: str = "-1") -> dict:
    """What the results card shows (no query)."""
    show = inversion is not None and inversion.generated_at is not None and program.state in SHOWN_IN
    if not show:
        return {"show": False}
    ipeid = program.instrument_program_execution_id
    inv = inversion.inversion_id
    return {
        "show": True,
        "program": program,
        "inversion": inversion,
        "tau": tau,
        "taus": [{"value": v, "label": label, "selected": v == tau} for v, label in LOG_TAUS],
        "maps": [{"key": k, "label": label,
                  "url": reverse("program-result-map", args=[ipeid, inv, k, tau])} for k, label in MAPS],
        "pixel_url": reverse("program-result-pixel", args=[ipeid, inv]),
    }


def _inversion(ipeid: str, inversion_id: str) -> Inversion:
    return get_object_or_404(Inversion.objects.select_related("program"), inversion_id=inversion_id,
                             program__instrument_program_execution_id=ipeid)


def _frame_paths(inversion: Inversion, folder: Path) -> list[Path]:
    names = L2File.objects.filter(inversion=inversion, kind=L2File.Kind.FRAME).order_by("step").values_list(
        "filename", flat=True)
    return [folder / name for name in names]


@require_GET
def results_card(request, ipeid: str):
    """The results card alone (the log tau select swaps it)."""
    from publishing.selectors import current_inversion

    program = get_object_or_404(ObservingProgram, instrument_program_execution_id=ipeid)
    tau = request.GET.get("tau", "-1")
    if tau not in TAU_VALUES:
        return _bad(request, "log τ must be −2, −1 or 0.")
    response = render(request, "publishing/partials/results.html",
                      results_context(program, current_inversion(program), tau))
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
def result_map(request, ipeid: str, inversion_id: str, quantity: str, tau: str):
    """The PNG of one map, drawn the first time it is asked for."""
    from publishing import plots

    if quantity not in plots.MAP_BY_KEY or tau not in TAU_VALUES:
        raise Http404("no such map")
    inversion = _inversion(ipeid, inversion_id)
    folder = frames_folder(inversion)
    if folder is None or inversion.generated_at is None:
        raise Http404("the L2 frames of this inversion are not on this machine")
    try:
        path, drawn = plots.map_png(cache_folder(inversion, folder), _frame_paths(inversion, folder),
                                    plots.MAP_BY_KEY[quantity], float(tau))
    except (plots.PlotError, OSError, ValueError) as exc:
        log.warning("map %s of %s at log tau %s not drawn: %s", quantity, inversion_id, tau, exc)
        return HttpResponse(f"The map cannot be drawn: {exc}", status=404, content_type="text/plain")
    if drawn:
        log.info("drew map %s of %s at log tau %s", quantity, inversion_id, tau)
    response = FileResponse(open(path, "rb"), content_type="image/png")
    patch_cache_control(response, private=True, max_age=3600)
    return response


def _bad(request, message: str):
    return render(request, "publishing/partials/pixel.html", {"problem": message}, status=400)


@require_GET
def result_pixel(request, ipeid: str, inversion_id: str):
    """The profiles and depth curves of the pixel under a click (``fx``, ``fy``: fractions of the map)."""
    from publishing import plots

    inversion = _inversion(ipeid, inversion_id)
    folder = frames_folder(inversion)
    if folder is None or inversion.generated_at is None:
        return _bad(request, "The L2 frames of this inversion are not on this machine.")
    paths = _frame_paths(inversion, folder)
    try:
        index = plots.cached_index(cache_folder(inversion, folder), paths)
        if "step" in request.GET or "slit" in request.GET:
            step, slit = int(request.GET.get("step", "")), int(request.GET.get("slit", ""))
            if not (0 <= step < index.shape[0] and 0 <= slit < index.shape[1]):
                return _bad(request, f"There is no pixel at raster step {step}, slit position {slit}.")
            where = (step, slit)
        else:
            fx, fy = float(request.GET.get("fx", "")), float(request.GET.get("fy", ""))
            if not (0 <= fx <= 1 and 0 <= fy <= 1):
                raise ValueError
            where = plots.pixel_at(index.lon, index.lat, fx, fy)
    except ValueError:
        return _bad(request, "Click a point of a map to see its profiles.")
    except (plots.PlotError, OSError) as exc:
        return _bad(request, f"The L2 frames cannot be read: {exc}")
    if where is None:
        return render(request, "publishing/partials/pixel.html", {"outside": True})
    step, slit = where
    try:
        lines = plots.pixel_profiles(paths[step], slit)
        log_tau, curves = plots.pixel_depth_curves(index, step, slit)
    except (plots.PlotError, OSError) as exc:
        return _bad(request, f"The L2 frame of raster step {step} cannot be read: {exc}")
    context = {
        "step": step, "slit": slit, "lon": float(index.lon[step, slit]), "lat": float(index.lat[step, slit]),
        "lines": plots.profile_panels(lines), "depth": plots.depth_panels(log_tau, curves),
        "frame": paths[step].name,
    }
    return render(request, "publishing/partials/pixel.html", context)
