"""``GET /metrics`` on the metrics port: Prometheus text format."""
from __future__ import annotations

from typing import Iterator, Optional

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .common import Guard, methods


class _Filtered:
    def __init__(self, source: CollectorRegistry, names: set[str]) -> None:
        self.source = source
        self.names = names

    def collect(self) -> Iterator[Metric]:
        for fam in self.source.collect():
            if fam.name in self.names or any(s.name in self.names for s in fam.samples):
                yield fam


def build_metrics_app(registry: CollectorRegistry, guard: Optional[Guard] = None) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        names = set(request.query.getall("name[]", []))
        source = registry
        if names:
            source = CollectorRegistry(auto_describe=False)
            source.register(_Filtered(registry, names))  # type: ignore[arg-type]
        return web.Response(body=generate_latest(source), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_route("*", "/metrics", methods({"GET": metrics}, guard))
    return app
