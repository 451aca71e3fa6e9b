""""Open in Globus" links: the Globus web app's file manager on a collection and a folder.

One helper for every page (cubes, quick-looks, results, L2 files, published inversions, L1
folders). A collection is named by the L2_*_COLLECTION settings; a value that is a UUID is the
Globus collection id itself, a name (the embedded default's ``dkist-l1``, ``scratch`` …) is
looked up in ``L2_GLOBUS_COLLECTION_IDS``. A collection with no id gets no link.
"""
from __future__ import annotations

import json
import posixpath
import uuid
from functools import lru_cache
from urllib.parse import urlencode

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

FILE_MANAGER = "https://app.globus.org/file-manager"


@lru_cache(maxsize=8)
def _parse_ids(raw: str) -> dict[str, str]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"L2_GLOBUS_COLLECTION_IDS must be a JSON object, not {raw[:80]!r}") from exc
    if not isinstance(value, dict) or not all(isinstance(v, str) and _is_uuid(v) for v in value.values()):
        raise ImproperlyConfigured('L2_GLOBUS_COLLECTION_IDS must map collection names to UUIDs: {"publish": "…"}')
    return {str(k): v.lower() for k, v in value.items()}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return len(value) == 36


def collection_id(collection: str | None) -> str | None:
    """The Globus collection UUID for a collection as the settings name it, or None."""
    if not collection:
        return None
    if _is_uuid(collection):
        return collection.lower()
    return _parse_ids(settings.L2_GLOBUS_COLLECTION_IDS).get(collection)


def folder_of(path: str, *, is_file: bool = False) -> str:
    """A folder as the file manager wants it: absolute, ending in ``/``; for a file, its folder."""
    path = posixpath.normpath("/" + (path or "").lstrip("/"))
    if is_file:
        path = posixpath.dirname(path)
    return path if path.endswith("/") else path + "/"


def file_manager_url(collection: str | None, path: str | None, *, is_file: bool = False) -> str | None:
    """``https://app.globus.org/file-manager?origin_id=…&origin_path=…``, or None without a collection id.

    The file manager opens folders: a file's link (``is_file``) opens the folder holding it.
    """
    cid = collection_id(collection)
    if cid is None or path is None:
        return None
    return f"{FILE_MANAGER}?{urlencode({'origin_id': cid, 'origin_path': folder_of(path, is_file=is_file)})}"
