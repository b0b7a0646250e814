"""The OpenAPI documents: valid OpenAPI 3, served on both ports, and covering every route."""
from __future__ import annotations

import requests
from openapi_spec_validator import validate

from conftest import make_archive

OK = """
def handle(data, context):
    if data is None:
        return None
    return ["ok"] * len(data)
"""


def _app_paths(app) -> set[str]:
    out = set()
    for resource in app.router.resources():
        path = resource.canonical
        if path != "/{tail}" and not (path != "/" and path.endswith("/")):  # trailing-slash aliases
            out.add(path)
    return out


def test_documents_are_valid_and_cover_every_route():
    from modelserve.http.inference import build_inference_app
    from modelserve.http.management import build_management_app
    from modelserve.http.openapi import inference_openapi, management_openapi

    inf_doc, mgmt_doc = inference_openapi(), management_openapi()
    validate(inf_doc)
    validate(mgmt_doc)
    from modelserve.http.v2 import add_oip_routes

    inf_app = build_inference_app(service=None, max_request_size=100)  # type: ignore[arg-type]
    add_oip_routes(inf_app, service=type("S", (), {"registry": None})(), max_request_size=100)  # type: ignore[arg-type]
    from modelserve.config import ServerConfig
    from modelserve.console import add_console

    mgmt_app = build_management_app(service=None, enable_model_api=False, auth=object())  # type: ignore[arg-type]
    add_console(mgmt_app, ServerConfig(), None, None, None)  # type: ignore[arg-type]
    assert _app_paths(inf_app) <= set(inf_doc["paths"]), _app_paths(inf_app) - set(inf_doc["paths"])
    assert _app_paths(mgmt_app) <= set(mgmt_doc["paths"]), _app_paths(mgmt_app) - set(mgmt_doc["paths"])


def test_served_on_options_root_and_api_description(model_store, server_factory):
    make_archive(model_store, "okm", OK)
    srv = server_factory(model_store, ["okm=okm.mar"]).start()
    for base in (srv.url, srv.mgmt):
        r = requests.options(base + "/")
        assert r.status_code == 200 and r.json()["openapi"].startswith("3.")
        assert requests.get(base + "/api-description").json() == r.json()
    assert "/models/{model_name}/{model_version}/set-default" in requests.options(srv.mgmt + "/").json()["paths"]
    assert "/predictions/{model_name}" in requests.options(srv.url + "/").json()["paths"]
