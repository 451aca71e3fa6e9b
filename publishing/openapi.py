"""The OpenAPI 3.1 description of the JSON API, served at /api/v1/openapi.json."""
from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from inversions.states import State

PAGE_PARAMS = [
    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
    {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
    {
        "name": "updated_since",
        "in": "query",
        "description": "only records changed after this instant (ISO 8601; no zone = UTC): for incremental pulls",
        "schema": {"type": "string", "format": "date-time"},
    },
]
ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def page_of(ref: str) -> dict:
    return {
        "type": "object",
        "properties": {
            "count": {"type": "integer"},
            "page": {"type": "integer"},
            "page_size": {"type": "integer"},
            "pages": {"type": "integer"},
            "results": {"type": "array", "items": {"$ref": ref}},
        },
        "required": ["count", "page", "page_size", "pages", "results"],
    }


def errors(*codes: int) -> dict:
    text = {400: "bad parameters or body (the reason is in error)", 401: "no, invalid or revoked token", 403: "not allowed for this user", 404: "no such record"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}


PROGRAM_SUMMARY = {
    "type": "object",
    "properties": {
        "instrumentProgramExecutionId": {"type": "string"},
        "observingProgramExecutionId": {"type": "string"},
        "primaryProposalId": {"type": "string"},
        "primaryExperimentId": {"type": "string"},
        "instrumentName": {"type": "string"},
        "state": {"type": "string", "enum": State.values},
        "stateChangedAt": {"type": "string", "format": "date-time"},
        "spectralLines": {"type": "array", "items": {"type": "string"}},
        "datasetCount": {"type": "integer"},
        "startTime": {"type": ["string", "null"], "format": "date-time"},
        "updatedAt": {"type": "string", "format": "date-time"},
    },
}
TRANSITION = {
    "type": "object",
    "properties": {
        "from": {"type": ["string", "null"]},
        "to": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
        "actor": {"type": "string"},
        "reason": {"type": "string"},
        "correction": {"type": "boolean"},
        "details": {"type": "object"},
    },
}
PROGRAM = {
    "allOf": [
        {"$ref": "#/components/schemas/ProgramSummary"},
        {
            "type": "object",
            "properties": {
                "claimedBy": {"type": ["string", "null"]},
                "claimedAt": {"type": ["string", "null"], "format": "date-time"},
                "qualification": {"type": ["object", "null"], "description": "rules with pass/fail and measured values, warnings"},
                "datasets": {"type": "array", "items": {"type": "object"}},
                "history": {"type": "array", "items": {"$ref": "#/components/schemas/Transition"}},
            },
        },
    ]
}


def spec() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "L2 API",
            "version": "1",
            "description": "Observing Programs, their life-cycle and Level 2 inversions, for the metadata store, the portal and the science cluster.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"token": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer", "description": "an API token from `manage.py api_token create`"},
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
            "schemas": {"ProgramSummary": PROGRAM_SUMMARY, "Program": PROGRAM, "Transition": TRANSITION, "Error": ERROR},
        },
        "paths": {
            "/programs": {
                "get": {
                    "summary": "Observing Programs, oldest change first",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"type": "string", "enum": State.values}},
                        {"name": "instrument", "in": "query", "schema": {"type": "string"}},
                        {"name": "proposal", "in": "query", "schema": {"type": "string"}},
                        *PAGE_PARAMS,
                    ],
                    "responses": {
                        "200": {"description": "a page", "content": {"application/json": {"schema": page_of("#/components/schemas/ProgramSummary")}}},
                        **errors(400, 401),
                    },
                }
            },
            "/programs/{instrumentProgramExecutionId}": {
                "get": {
                    "summary": "One program with datasets, qualification and history",
                    "parameters": [{"name": "instrumentProgramExecutionId", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "the program", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Program"}}}},
                        **errors(401, 404),
                    },
                }
            },
            "/programs/{instrumentProgramExecutionId}/inverted": {
                "post": {
                    "summary": "Report a Working program inverted (science team tokens)",
                    "description": "The three result files are fetched from the collection and checked (present, readable, shapes agree with each other and with the program's raster steps) before the program becomes Inverted. A refused report changes nothing.",
                    "parameters": [{"name": "instrumentProgramExecutionId", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["collection", "path", "software_commit", "dataset_ids"],
                                    "properties": {
                                        "collection": {"type": "string", "description": "Globus collection id of the result files"},
                                        "path": {"type": "string", "description": "absolute folder holding inv_res_mod.fits, inv_res_pre.fits, per_ori.fits"},
                                        "software_commit": {"type": "string", "pattern": "^[0-9a-fA-F]{7,40}$"},
                                        "dataset_ids": {"type": "array", "items": {"type": "string"}},
                                        "notes": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {"description": "the program is Inverted", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "400": {
                            "description": "refused: the reason, and the field at fault when there is one",
                            "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}}, "required": ["error"]}}},
                        },
                        **errors(401, 403, 404),
                        "405": {"description": "only POST"},
                    },
                }
            },
        },
    }


@require_GET
def openapi(request):
    return JsonResponse(spec())


openapi.login_required = False  # the description itself holds no data
