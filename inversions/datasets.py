"""What the dashboard shows of a dataset beyond its columns: line windows, corners, movie, raw-only fields.

Plain functions over a :class:`~inversions.models.Dataset` (no queries). Fields the metadata store
sends that have no column yet are read from the dataset's raw record through :func:`record_field`,
so each switches to its column in one place when it gets one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from scanning.qualification import DEFAULT_LINE_WINDOWS, LineWindow

EPS_NM = 1e-9
_VIMEO = re.compile(r"^https?://(?:www\.)?(?:player\.)?vimeo\.com/(?:video/)?(?P<id>\d+)(?:[/?#].*)?$")

#: (column, record key, label, unit) of the fields the dataset page lists, in order
FIELDS = (
    ("product_id", "productId", "Product", ""),
    ("primary_proposal_id", "primaryProposalId", "Proposal", ""),
    ("primary_experiment_id", "primaryExperimentId", "Experiment", ""),
    ("observing_program_execution_id", "observingProgramExecutionId", "Observing program execution", ""),
    ("instrument_program_execution_id", "instrumentProgramExecutionId", "Instrument program execution", ""),
    ("instrument_name", "instrumentName", "Instrument", ""),
    ("start_time", "startTime", "Observed from", "UTC"),
    ("end_time", "endTime", "Observed to", "UTC"),
    ("wavelength_min", "wavelengthMin", "Wavelength min", "nm"),
    ("wavelength_max", "wavelengthMax", "Wavelength max", "nm"),
    ("stokes_parameters", "stokesParameters", "Stokes parameters", ""),
    ("frame_count", "frameCount", "Frames", ""),
    ("exposure_time", "exposureTime", "Exposure time", "ms"),
    ("ao_locked", "aoLocked", "AO locked", "frames"),
    ("bucket", "bucket", "Bucket", ""),
    ("create_date", "createDate", "Created in the store", "UTC"),
    ("update_date", "updateDate", "Updated in the store", "UTC"),
)
#: record fields with no column (yet): record key, label, unit
RECORD_ONLY = (
    ("datasetSize", "Size", "GB"),
    ("qualityReportObjectKey", "Quality report", ""),
    ("inputDatasetObservePreprocessing", "Input observe frames", ""),
    ("averageDatasetSpatialSampling", "Spatial sampling", "arcsec/pixel"),
    ("averageDatasetSpectralSampling", "Spectral sampling", "nm/pixel"),
    ("experimentDescription", "Experiment description", ""),
)


def record_field(dataset, key: str):
    """A field of the store's record: its column where it has one, else the raw JSON."""
    raw = dataset.raw if isinstance(dataset.raw, dict) else {}
    return raw.get(key)


def browse_movie_url(dataset) -> str:
    return (getattr(dataset, "browse_movie_url", "") or record_field(dataset, "browseMovieUrl") or "").strip()


def quality_report_key(dataset) -> str:
    value = record_field(dataset, "qualityReportObjectKey")
    return value.strip() if isinstance(value, str) else ""


def vimeo_embed_url(url: str) -> str | None:
    """The player URL of a Vimeo link (``https://vimeo.com/123`` → ``https://player.vimeo.com/video/123``)."""
    m = _VIMEO.match(url or "")
    return f"https://player.vimeo.com/video/{m['id']}" if m else None


def is_web_link(url: str) -> bool:
    return isinstance(url, str) and url.startswith(("https://", "http://"))


@dataclass(frozen=True)
class WindowCheck:
    window: LineWindow
    min_ok: bool  # wavelength_min at or below the window's low end
    max_ok: bool  # wavelength_max at or above its high end

    @property
    def ok(self) -> bool:
        return self.min_ok and self.max_ok


def window_check(dataset, windows=DEFAULT_LINE_WINDOWS) -> WindowCheck | None:
    """Whether the dataset's wavelength range spans the window of its line (None: no window, no range)."""
    lines = set(dataset.spectral_lines or [])
    lo, hi = dataset.wavelength_min, dataset.wavelength_max
    if lo is None or hi is None or not all(math.isfinite(v) for v in (lo, hi)):
        return None
    for window in windows:
        if lines & set(window.lines):
            return WindowCheck(window, lo <= window.low_nm + EPS_NM, hi >= window.high_nm - EPS_NM)
    return None


def corners(box) -> list[dict]:
    """The four corners of a bounding box ``((x1, y1), (x2, y2))`` (arcsec) and their distance from disc centre."""
    if not box:
        return []
    (x1, y1), (x2, y2) = box
    return [{"x": x, "y": y, "distance": math.hypot(x, y)} for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))]


def count_bars(counts, total) -> list[dict]:
    """A count object (``health``, ``gosStatus``) as bars: each member, its count and share of ``total`` frames."""
    if not isinstance(counts, dict):
        return []
    out = []
    for key, value in counts.items():
        n = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        share = 100.0 * n / total if n is not None and total else None
        out.append({"name": key, "count": n, "percent": share})
    return out


def distribution(values, scale: float = 1.0) -> list[dict]:
    """``{min, p25, med, p75, max}`` as rows, scaled (the Fried parameter: m → cm)."""
    if not isinstance(values, dict):
        return []
    rows = []
    for key, label in (("min", "min"), ("p25", "25 %"), ("med", "median"), ("p75", "75 %"), ("max", "max")):
        v = values.get(key)
        rows.append({"name": label, "value": v * scale if isinstance(v, (int, float)) and math.isfinite(v) else None})
    return rows
