"""The dataset page (``/datasets/<datasetId>``): every stored field with its unit, the count objects and
distributions, the browse movie, the quality report, embargo, the raw record, its program and the
chain of datasets of the same product (the newest current, older ones superseded). Two queries."""
from __future__ import annotations

import json

from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from inversions import datasets as ds
from inversions import selectors
from inversions.models import Dataset


def _field_rows(d: Dataset) -> list[dict]:
    digits = {"wavelengthMin": 3, "wavelengthMax": 3, "exposureTime": 2}
    rows = [{"label": label, "value": getattr(d, column), "unit": unit, "key": key, "digits": digits.get(key)}
            for column, key, label, unit in ds.FIELDS]
    for key, label, unit in ds.RECORD_ONLY:
        value = ds.record_field(d, key)
        if value not in (None, "") and key != "experimentDescription":
            rows.append({"label": label, "value": value, "unit": unit, "key": key})
    return rows


@require_GET
def dataset_detail(request, dataset_id: str):
    try:
        d = Dataset.objects.select_related("program").get(dataset_id=dataset_id)
    except Dataset.DoesNotExist:
        raise Http404(f"No dataset {dataset_id}")
    [row] = selectors.dataset_rows([d])
    chain = []
    if d.product_id:
        chain = list(Dataset.objects.filter(product_id=d.product_id).only(
            "dataset_id", "create_date", "update_date", "superseded", "program_id").order_by("-create_date", "-id"))
    movie = ds.browse_movie_url(d)
    report = ds.quality_report_key(d)
    context = {
        "nav": "programs",
        "d": d,
        "row": row,
        "program": d.program,
        "fields": _field_rows(d),
        "window": row.window,
        "health": ds.count_bars(d.health, d.frame_count),
        "gos": ds.count_bars(d.gos_status, d.frame_count),
        "ao_percent": 100.0 * d.ao_locked / d.frame_count if d.ao_locked is not None and d.frame_count else None,
        "light": ds.distribution(d.light_level),
        "fried": ds.distribution(d.fried_parameter, 100.0),  # m → cm
        "movie": movie,
        "movie_embed": ds.vimeo_embed_url(movie),
        "movie_is_link": ds.is_web_link(movie),
        "quality_report": report,
        "quality_report_is_link": ds.is_web_link(report),
        "chain": chain,
        "raw": json.dumps(d.raw, indent=2, sort_keys=True, default=str),
        "description": ds.record_field(d, "experimentDescription") or d.program.experiment_description,
    }
    return render(request, "inversions/dataset_detail.html", context)
