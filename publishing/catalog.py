"""The frame catalog's messages of one publication (DESIGN §9.3): plain data, no Django.

One ``catalog.frame.m`` message per published FITS and one ``catalog.object.m`` message for
the dataset's ASDF, all with the same ``conversationId`` (one per publication: a republish
sends a new set). ``objectName`` is the object key inside the bucket, the one the store
record's ``asdfObjectKey`` uses.
"""
from __future__ import annotations

from collections.abc import Iterable

FRAME_KEY, OBJECT_KEY = "catalog.frame.m", "catalog.object.m"


def frame_message(bucket: str, object_key: str, conversation_id: str) -> dict:
    return {"bucket": bucket, "objectName": object_key, "incrementDatasetCatalogReceiptCount": False,
            "conversationId": conversation_id}


def asdf_message(bucket: str, object_key: str, inversion_id: str, conversation_id: str) -> dict:
    return {"bucket": bucket, "objectName": object_key, "objectType": "ASDF", "groupId": inversion_id,
            "groupName": "DATASET", "incrementDatasetCatalogReceiptCount": False, "conversationId": conversation_id}


def publication_messages(*, bucket: str, inversion_id: str, frame_keys: Iterable[str], asdf_key: str,
                         conversation_id: str) -> list[tuple[str, dict]]:
    """``(routing_key, body)`` of every message of a publication: the frames in order, then the ASDF."""
    if not bucket or not asdf_key:
        raise ValueError("a publication's catalog messages need the bucket and the ASDF's object key")
    messages = [(FRAME_KEY, frame_message(bucket, key, conversation_id)) for key in frame_keys]
    messages.append((OBJECT_KEY, asdf_message(bucket, asdf_key, inversion_id, conversation_id)))
    return messages
