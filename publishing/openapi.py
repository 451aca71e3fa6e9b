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
        "wavelengthRanges": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                             "description": "[wavelengthMin, wavelengthMax] in nm of every current dataset"},
        "isEmbargoed": {"type": ["boolean", "null"], "description": "any current dataset embargoed (null: none says)"},
        "embargoEndDate": {"type": ["string", "null"], "format": "date-time", "description": "the latest embargo end of the current datasets"},
    },
}
_NUMBER = {"type": ["number", "null"]}
_TEXT = {"type": ["string", "null"]}
_DISTRIBUTION = {"type": ["object", "null"], "properties": {k: _NUMBER for k in ("min", "p25", "med", "p75", "max")}}
DATASET = {
    "type": "object",
    "description": "A dataset (one metadata-store record) as stored: the store's field names; units in the program's datasetUnits",
    "properties": {
        "datasetId": {"type": "string"}, "productId": _TEXT, "superseded": {"type": "boolean"},
        "wavelengthMin": {**_NUMBER, "description": "nm"}, "wavelengthMax": {**_NUMBER, "description": "nm"},
        "stokesParameters": {"type": "string"}, "spectralLines": {"type": ["array", "null"], "items": {"type": "string"}},
        "frameCount": {"type": ["integer", "null"]}, "createDate": {"type": "string", "format": "date-time"},
        "updateDate": {"type": "string", "format": "date-time"},
        "startTime": {**_TEXT, "format": "date-time"}, "endTime": {**_TEXT, "format": "date-time"},
        "instrumentName": _TEXT, "boundingBox": {"type": ["array", "null"], "description": "[[x1, y1], [x2, y2]] in arcsec"},
        "exposureTime": {**_NUMBER, "description": "ms"},
        "health": {"type": ["object", "null"], "description": "frame counts per HEALTH value"},
        "gosStatus": {"type": ["object", "null"], "description": "frame counts per GOS_STATUS value"},
        "aoLocked": {"type": ["integer", "null"], "description": "frames with AO locked"},
        "lightLevel": {**_DISTRIBUTION, "description": "LIGHTLVL distribution (shown, never a rule)"},
        "friedParameter": {**_DISTRIBUTION, "description": "ATMOS_R0 distribution, m"},
        "polarimetricAccuracy": {**_DISTRIBUTION, "description": "POL_SENS distribution (shown, never a rule)"},
        "qualityAverageFriedParameter": {**_NUMBER, "description": "m"},
        "qualityAveragePolarimetricAccuracy": _NUMBER,
        "qualityReportObjectKey": _TEXT, "browseMovieUrl": _TEXT, "browseMovieObjectKey": _TEXT,
        "asdfObjectKey": {**_TEXT, "description": "the L1 ASDF file (its gwcs) in bucket"}, "bucket": _TEXT,
        "datasetSize": {**_NUMBER, "description": "GB"}, "hasAllStokes": {"type": ["boolean", "null"]},
        "targetTypes": {"type": ["array", "null"], "items": {"type": "string"}}, "status": _TEXT,
        "isEmbargoed": {"type": ["boolean", "null"]}, "embargoEndDate": {**_TEXT, "format": "date-time"},
        "noData": {"type": "array", "description": "values the store sent that could not be used (the field has no data)",
                   "items": {"type": "object", "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}}},
    },
}
SCAN = {
    "type": "object",
    "description": "A scan of the metadata store: bad records (refused) and warnings (stored datasets with unusable values) apart",
    "properties": {
        "id": {"type": "integer"}, "status": {"type": "string", "enum": ["running", "succeeded", "failed"]},
        "full": {"type": "boolean"}, "startedAt": {"type": "string", "format": "date-time"},
        "finishedAt": {"type": ["string", "null"], "format": "date-time"}, "triggeredBy": {"type": "string"},
        **{name: {"type": "integer"} for name in ("pages", "records", "new", "updated", "unchanged", "programsNew",
                                                   "programsQualified")},
        "errors": {"type": "integer", "description": "bad records: not stored"},
        "warnings": {"type": "integer", "description": "values of stored datasets that could not be used"},
        "newestUpdateDate": {"type": ["string", "null"], "format": "date-time"}, "error": {"type": ["string", "null"]},
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
INVERSION_SUMMARY = {
    "type": "object",
    "description": "An accepted set of inversion results and what became of it (the metadata store's names where it has them)",
    "properties": {
        "inversionId": {"type": "string"},
        "instrumentProgramExecutionId": {"type": "string"},
        "primaryProposalId": {"type": "string"},
        "primaryExperimentId": {"type": "string"},
        "programState": {"type": "string", "enum": State.values},
        "datasetIds": {"type": "array", "items": {"type": "string"}},
        "spectralLines": {"type": "array", "items": {"type": "string"}},
        "softwareCommit": {"type": "string"},
        "rasterSteps": {"type": "integer"},
        "reportedBy": {"type": "string"},
        "reportedAt": {"type": "string", "format": "date-time"},
        "acceptedAt": {"type": "string", "format": "date-time", "description": "when the result files passed the checks"},
        "generatedAt": {"type": ["string", "null"], "format": "date-time"},
        "bucket": {"type": ["string", "null"]},
        "publishedCollection": {"type": ["string", "null"]},
        "publishedPath": {"type": ["string", "null"], "description": "/{bucket}/{proposal}/{inversion}/"},
        "publishedAt": {"type": ["string", "null"], "format": "date-time"},
        "asdfObjectKey": {"type": ["string", "null"]},
        "recordedInStoreAt": {"type": ["string", "null"], "format": "date-time", "description": "when createL2InversionInventory succeeded"},
        "fileCount": {"type": "integer"},
        "updatedAt": {"type": "string", "format": "date-time"},
    },
}
L2_FILE = {
    "type": "object",
    "properties": {
        "filename": {"type": "string"},
        "kind": {"type": "string", "enum": ["frame", "metadata"], "description": "an L2 FITS frame (one raster step) or the dataset's ASDF file"},
        "step": {"type": ["integer", "null"], "description": "raster step (0-based) of a frame"},
        "size": {"type": "integer"},
        "sha256": {"type": "string"},
        "fileId": {"type": ["string", "null"]},
        "objectKey": {"type": ["string", "null"], "description": "key in the bucket once published"},
    },
}
INVERSION = {
    "allOf": [
        {"$ref": "#/components/schemas/InversionSummary"},
        {
            "type": "object",
            "properties": {
                "notes": {"type": "string"},
                "reportedCollection": {"type": "string"},
                "reportedPath": {"type": "string"},
                "resultFiles": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "size": {"type": "integer"}, "sha256": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}}}}},
                "files": {"type": "array", "items": {"$ref": "#/components/schemas/L2File"}},
            },
        },
    ]
}
INTAKE = {
    "type": "object",
    "properties": {
        "intake": {"type": "integer", "description": "the intake work order"},
        "status": {"type": "string", "enum": ["queued", "started", "completed", "failed"]},
        "inversionId": {"type": "string", "description": "the id the inversion gets if its files pass"},
        "instrumentProgramExecutionId": {"type": "string"},
        "reportedAt": {"type": "string", "format": "date-time"},
        "reportedBy": {"type": "string"},
        "error": {"type": ["string", "null"]},
        "report": {"type": "object"},
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
                "intake": {"oneOf": [{"$ref": "#/components/schemas/Intake"}, {"type": "null"}], "description": "the newest report of results and how its check went"},
                "datasets": {"type": "array", "items": {"$ref": "#/components/schemas/Dataset"}},
                "datasetUnits": {"type": "object", "additionalProperties": {"type": "string"},
                                 "description": "unit of each dataset number (\"\": a ratio)"},
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
            "schemas": {"ProgramSummary": PROGRAM_SUMMARY, "Program": PROGRAM, "Transition": TRANSITION, "Error": ERROR,
                        "InversionSummary": INVERSION_SUMMARY, "Inversion": INVERSION, "L2File": L2_FILE,
                        "Intake": INTAKE, "Dataset": DATASET, "Scan": SCAN},
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
                    "description": "Everything that can be checked without the files (fields, program Working, datasets, collection and path) is checked at once: a refused report answers 400 and changes nothing. An accepted one answers 202 with the intake order; a worker then fetches the three result files from the collection and checks them (present, readable FITS, shapes agree with each other and with the program's raster steps). Good files: the inversion is recorded and the program becomes Inverted. Bad files: the program goes to Error with step `results` and the reason (see GET /programs/{id}).",
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
                        "202": {"description": "accepted: the files are being fetched and checked", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Intake"}}}},
                        "400": {
                            "description": "refused: the reason, and the field at fault when there is one",
                            "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}}, "required": ["error"]}}},
                        },
                        **errors(401, 403, 404),
                        "405": {"description": "only POST"},
                    },
                }
            },
            "/scans": {
                "get": {
                    "summary": "Scans of the metadata store, newest first, with their counts",
                    "parameters": [{"name": "status", "in": "query", "schema": {"type": "string", "enum": ["running", "succeeded", "failed"]}},
                                   *PAGE_PARAMS[:2]],
                    "responses": {
                        "200": {"description": "a page", "content": {"application/json": {"schema": page_of("#/components/schemas/Scan")}}},
                        **errors(400, 401),
                    },
                }
            },
            "/scans/{id}": {
                "get": {
                    "summary": "One scan with its bad records and warnings (500 of each at most; the counts are all)",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {
                        "200": {"description": "the scan", "content": {"application/json": {"schema": {"allOf": [
                            {"$ref": "#/components/schemas/Scan"},
                            {"type": "object", "properties": {
                                "badRecords": {"type": "array", "items": {"type": "object"}},
                                "recordWarnings": {"type": "array", "items": {"type": "object"}}}}]}}}},
                        **errors(401, 404),
                    },
                }
            },
            "/inversions": {
                "get": {
                    "summary": "Inversions, oldest change first (for incremental pulls: updated_since)",
                    "parameters": [
                        {"name": "program", "in": "query", "description": "instrumentProgramExecutionId", "schema": {"type": "string"}},
                        {"name": "proposal", "in": "query", "schema": {"type": "string"}},
                        {"name": "dataset", "in": "query", "description": "an L1 dataset the inversion used", "schema": {"type": "string"}},
                        {"name": "published", "in": "query", "description": "recorded in the metadata store or not", "schema": {"type": "boolean"}},
                        *PAGE_PARAMS,
                    ],
                    "responses": {
                        "200": {"description": "a page", "content": {"application/json": {"schema": page_of("#/components/schemas/InversionSummary")}}},
                        **errors(400, 401),
                    },
                }
            },
            "/inversions/{inversionId}": {
                "get": {
                    "summary": "One inversion with its result files and its L2 files",
                    "parameters": [{"name": "inversionId", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "the inversion", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Inversion"}}}},
                        **errors(400, 401, 404),
                    },
                }
            },
        },
    }


@require_GET
def openapi(request):
    return JsonResponse(spec())


openapi.login_required = False  # the description itself holds no data
