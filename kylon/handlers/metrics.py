"""GET /metrics: the Prometheus text exposition of kylon/metrics.py."""

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .base import BaseHandler


class MetricsHandler(BaseHandler):
    def get(self):
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(REGISTRY))


default_handlers = [(r"/metrics", MetricsHandler)]
