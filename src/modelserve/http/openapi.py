"""OpenAPI 3 documents of the inference and management ports (``OPTIONS /``, ``GET /api-description``)."""
from __future__ import annotations

from typing import Any

from .. import __version__

ERROR = {"$ref": "#/components/schemas/Error"}
_COMPONENTS = {
    "schemas": {
        "Error": {
            "type": "object", "required": ["code", "type", "message"],
            "properties": {"code": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"}},
        },
        "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "OipError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    },
}


def _json(schema: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
            409: "Conflict", 413: "Request too large", 500: "Internal error", 503: "Unavailable", 504: "Timed out"}
    return {str(c): _json(ERROR, text[c]) for c in codes}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"in": "path", "name": name, "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, typ: str, description: str, required: bool = False) -> dict[str, Any]:
    return {"in": "query", "name": name, "required": required, "description": description, "schema": {"type": typ}}


def _doc(title: str, paths: dict[str, Any]) -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": title, "version": __version__, "description": "modelserve"},
            "paths": paths, "components": _COMPONENTS}


def _describe_route() -> dict[str, Any]:
    return {"get": {"operationId": "apiDescription", "summary": "This OpenAPI document",
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document")}}}


def oip_paths() -> dict[str, Any]:
    """The Open Inference Protocol (v2) and KServe v1 routes of the inference port."""
    model = _path_param("model_name", "Name of a registered model")
    version = _path_param("model_version", "Version of the model")
    oip_error = {"$ref": "#/components/schemas/OipError"}

    def errs(*codes: int) -> dict[str, Any]:
        return {str(c): _json(oip_error, "Error") for c in codes}

    def get(op: str, params: list[dict[str, Any]], codes: tuple[int, ...] = (404,)) -> dict[str, Any]:
        return {"get": {"operationId": op, "parameters": params,
                        "responses": {"200": _json({"type": "object"}, "OK"), **errs(*codes)}}}

    infer_body = {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["inputs"],
                                        "properties": {"inputs": {"type": "array", "items": {"type": "object"}}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": {"operationId": "serverLive", "responses": {"200": _json({"type": "object"}, "Live")}}},
        "/v2/health/ready": {"get": {"operationId": "serverReady", "responses": {
            "200": _json({"type": "object"}, "Ready"), "503": _json({"type": "object"}, "Not ready")}}},
        "/v2": get("serverMetadata", [], ()),
        "/v2/repository/index": {"post": {"operationId": "repositoryIndex",
                                          "responses": {"200": _json({"type": "array", "items": {"type": "object"}}, "Models")}}},
        "/v2/models/stats": get("allModelStats", []),
        "/v1/models": get("v1Models", [], ()),
        "/v1/models/{model_name}": get("v1ModelReady", [model]),
        "/v1/models/{model_name}:predict": {"post": {
            "operationId": "v1Predict", "parameters": [model],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["instances"], "properties": {"instances": {"type": "array"}}}}}},
            "responses": {"200": _json({"type": "object"}, "Predictions"), **errs(400, 404, 413, 500, 503, 504)}}},
    }
    for suffix, params, tag in (("", [model], ""), ("/versions/{model_version}", [model, version], "Version")):
        base = "/v2/models/{model_name}" + suffix
        paths[base] = get("modelMetadata" + tag, params)
        paths[base + "/ready"] = {"get": {"operationId": "modelReady" + tag, "parameters": params, "responses": {
            "200": _json({"type": "object"}, "Ready"), "503": _json({"type": "object"}, "Not ready"), **errs(404)}}}
        paths[base + "/config"] = get("modelConfig" + tag, params)
        paths[base + "/stats"] = get("modelStats" + tag, params)
        paths[base + "/infer"] = {"post": {"operationId": "modelInfer" + tag, "parameters": params,
                                           "requestBody": infer_body,
                                           "responses": {"200": {"description": "Output tensors",
                                                                 "content": {"application/json": {"schema": {"type": "object"}},
                                                                             "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                                                         **errs(400, 404, 413, 500, 503, 504)}}}
    return paths


def inference_openapi(extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    model = _path_param("model_name", "Name of a registered model")
    version = _path_param("model_version", "Version of the model")
    body = {"required": False, "content": {
        "application/json": {"schema": {}},
        "text/plain": {"schema": {"type": "string"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "additionalProperties": {"type": "string", "format": "binary"}}},
    }}
    any_answer = {"description": "The handler's answer (JSON, text or bytes, as the handler returns)",
                  "content": {"*/*": {"schema": {}}}}
    predict_errors = _errors(400, 404, 413, 500, 503, 504)

    def predict(op: str, params: list[dict[str, Any]]) -> dict[str, Any]:
        return {m: {"operationId": f"{op}{m.title()}", "summary": "Run a prediction", "parameters": params,
                    "requestBody": body, "responses": {"200": any_answer, **predict_errors}} for m in ("post", "put")}

    paths: dict[str, Any] = {
        "/": {"options": {"operationId": "apiDescriptionOptions", "summary": "This OpenAPI document",
                          "responses": {"200": _json({"type": "object"}, "The OpenAPI document")}}},
        "/api-description": _describe_route(),
        "/ping": {"get": {"operationId": "ping", "summary": "Health: every model has its minimum of live workers",
                          "responses": {"200": _json({"$ref": "#/components/schemas/Status"}, "Healthy"),
                                        "500": _json({"$ref": "#/components/schemas/Status"}, "Unhealthy")}}},
        "/predictions/{model_name}": predict("predictions", [model]),
        "/predictions/{model_name}/{model_version}": predict("versionPredictions", [model, version]),
    }
    paths.update(oip_paths())
    paths.update(extra_paths or {})
    return _doc("modelserve inference API", paths)


def management_openapi(console: bool = True) -> dict[str, Any]:
    model = _path_param("model_name", "Name of a registered model")
    version = _path_param("model_version", "Version of the model, or 'all' when describing")
    ok = {"200": _json({"$ref": "#/components/schemas/Status"}, "Done")}
    accepted = {"202": _json({"$ref": "#/components/schemas/Status"}, "Accepted; runs in the background")}
    register_params = [
        _query("url", "string", "Archive in the model store, absolute path, or allowed http(s) URL", True),
        _query("model_name", "string", "Name to register under (default: the archive's)"),
        _query("handler", "string", "Handler to use instead of the archive's"),
        _query("runtime", "string", "Runtime: python"),
        _query("batch_size", "integer", "Requests per batch"),
        _query("max_batch_delay", "integer", "Milliseconds to wait for a batch to fill"),
        _query("initial_workers", "integer", "Workers to start"),
        _query("synchronous", "boolean", "Wait for the workers (default true)"),
        _query("response_timeout", "integer", "Seconds a batch may take"),
        _query("startup_timeout", "integer", "Seconds a worker may take to load"),
    ]
    scale_params = [_query("min_worker", "integer", "Minimum workers"), _query("max_worker", "integer", "Maximum workers"),
                    _query("synchronous", "boolean", "Wait until scaled (default false)")]
    describe_ok = _json({"type": "array", "items": {"type": "object"}}, "Describe objects")
    describe = {"operationId": "describeModel", "parameters": [model, _query("customized", "boolean", "Include describe_handle()")],
                "responses": {"200": describe_ok, **_errors(400, 404)}}
    paths: dict[str, Any] = {
        "/": {"options": {"operationId": "apiDescriptionOptions", "summary": "This OpenAPI document",
                          "responses": {"200": _json({"type": "object"}, "The OpenAPI document")}}},
        "/api-description": _describe_route(),
        "/models": {
            "get": {"operationId": "listModels", "parameters": [
                _query("limit", "integer", "Page size, at most 100"),
                _query("next_page_token", "string", "Token from the previous page")],
                "responses": {"200": _json({"type": "object", "properties": {
                    "models": {"type": "array", "items": {"type": "object"}}, "nextPageToken": {"type": "string"}}},
                    "Models, sorted by name"), **_errors(400)}},
            "post": {"operationId": "registerModel", "parameters": register_params,
                     "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}},
                     "responses": {**ok, **accepted, **_errors(400, 403, 404, 405, 409, 500)}},
        },
        "/models/{model_name}": {
            "get": describe,
            "put": {"operationId": "scaleModel", "parameters": [model, *scale_params],
                    "responses": {**ok, **accepted, **_errors(400, 404, 500)}},
            "delete": {"operationId": "unregisterModel", "parameters": [model],
                       "responses": {**ok, **_errors(403, 404, 405, 500)}},
        },
        "/models/{model_name}/{model_version}": {
            "get": {**describe, "operationId": "describeVersion", "parameters": [model, version, describe["parameters"][1]]},
            "put": {"operationId": "scaleVersion", "parameters": [model, version, *scale_params],
                    "responses": {**ok, **accepted, **_errors(400, 404, 500)}},
            "delete": {"operationId": "unregisterVersion", "parameters": [model, version],
                       "responses": {**ok, **_errors(403, 404, 405, 500)}},
        },
        "/models/{model_name}/{model_version}/set-default": {
            "put": {"operationId": "setDefault", "parameters": [model, version], "responses": {**ok, **_errors(404)}},
        },
        "/token": {"get": {"operationId": "rotateToken", "summary": "New management or inference key (API key)",
                           "parameters": [_query("type", "string", "management or inference", True)],
                           "responses": {"200": _json({"type": "object"}, "The new key"), **_errors(400, 401)}}},
    }
    if console:
        html = {"description": "The console page", "content": {"text/html": {"schema": {"type": "string"}}}}
        paths.update({
            "/console": {"get": {"operationId": "console", "responses": {"200": html}}},
            "/console/static/{name}": {"get": {"operationId": "consoleStatic",
                                               "parameters": [_path_param("name", "A file of the console")],
                                               "responses": {"200": {"description": "The file"}, **_errors(404)}}},
            "/console/api/stats": {"get": {"operationId": "consoleStats",
                                           "responses": {"200": _json({"type": "object"}, "Models, workers, counters"),
                                                         **_errors(401)}}},
            "/console/api/predict/{model_name}": {"post": {
                "operationId": "consolePredict", "parameters": [model],
                "responses": {"200": _json({"type": "object"}, "The prediction's status, headers and body"),
                              **_errors(401, 404)}}},
            "/console/api/predict/{model_name}/{model_version}": {"post": {
                "operationId": "consolePredictVersion", "parameters": [model, version],
                "responses": {"200": _json({"type": "object"}, "The prediction's status, headers and body"),
                              **_errors(401, 404)}}},
            "/console/api/inference": {"get": {
                "operationId": "consoleInferenceGet", "parameters": [_query("path", "string", "A GET route of the inference API", True)],
                "responses": {"200": _json({"type": "object"}, "The inference port's answer"), **_errors(401)}}},
        })
    return _doc("modelserve management API", paths)
