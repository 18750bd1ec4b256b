"""Kylon's Tornado Application: routing with a short way for proxy calls."""

import tornado.web
from tornado.routing import PathMatches


class KylonApplication(tornado.web.Application):
    """Tornado's Application, with a path under /proxy/ matched against the
    proxy rules alone (in their order): proxy calls are nearly all of the
    traffic, and Tornado's router would try every other rule first."""

    def __init__(self, handlers, **settings):
        super().__init__(handlers, **settings)
        self.proxy_rules = [
            (PathMatches(pattern), handler_class, rest[0] if rest else {})
            for pattern, handler_class, *rest in handlers
            if pattern.startswith("/proxy/")
        ]

    def find_handler(self, request, **kwargs):
        if request.path.startswith("/proxy/"):
            for matcher, handler_class, handler_kwargs in self.proxy_rules:
                params = matcher.match(request)
                if params is not None:
                    return self.get_handler_delegate(request, handler_class, handler_kwargs, **params)
        return super().find_handler(request, **kwargs)
