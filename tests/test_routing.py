"""Kylon's short way to the proxy handlers picks the same handler, with the
same path arguments, as Tornado's own routing over all the rules."""

import os

import pytest
import tornado.web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from kylon.application import KylonApplication
from kylon.handlers import NotFoundHandler, default_handlers
from kylon.providers import load_providers

HERE = os.path.dirname(os.path.abspath(__file__))


def handlers():
    return default_handlers(load_providers({}))


SETTINGS = dict(default_handler_class=NotFoundHandler, static_path=os.path.join(HERE, "..", "static"))


@pytest.mark.parametrize("path", [
    "/proxy/openai/v1/chat/completions",
    "/proxy/anthropic/v1/messages?beta=true",
    "/proxy/gemini/upload/v1beta/files",
    "/proxy/gemini/files/upload-urls",
    "/proxy/gemini/v1beta/models/gemini-2.5-flash:generateContent",
    "/proxy/openai",
    "/proxy/",
    "/proxy//v1/x",
    "/proxy/open%2Fai/v1/x",
    "/static/admin.css",
    "/favicon.ico",
    "/admin",
    "/admin/api/agents",
    "/healthz",
    "/metrics",
    "/nowhere",
])
def test_proxy_paths_route_as_tornado_would(path):
    def routed(application):
        request = HTTPServerRequest(start_line=RequestStartLine("GET", path, "HTTP/1.1"),
                                    headers=HTTPHeaders({"Host": "kylon.test"}))
        delegate = application.find_handler(request)
        return delegate.handler_class, delegate.path_args, delegate.handler_kwargs

    ours = routed(KylonApplication(handlers(), **SETTINGS))
    assert ours == routed(tornado.web.Application(handlers(), **SETTINGS))
