"""The admin pages take their Jinja environment from the application setting
`jinja_env`, built once; without it, once from `template_path`."""

import os
from unittest import mock

import tornado.web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from kylon.handlers.admin_pages import template_environment
from kylon.handlers.admin_pages.base import AdminPage

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")


def page(application):
    request = HTTPServerRequest(start_line=RequestStartLine("GET", "/admin", "HTTP/1.1"),
                                headers=HTTPHeaders({"Host": "kylon.test"}), connection=mock.Mock())
    return AdminPage(application, request)


def test_every_template_is_compiled_with_the_filters():
    env = template_environment(TEMPLATES)
    assert "login.html" in env.list_templates() and not env.auto_reload
    assert env.from_string("{{ 1234.5 | credits }} {{ 1234 | number }}").render() == "1,234.50 1,234"


def test_pages_use_the_application_setting():
    env = template_environment(TEMPLATES)
    application = tornado.web.Application(template_path=TEMPLATES, jinja_env=env)
    assert page(application).templates is env


def test_without_the_setting_one_is_built_once():
    application = tornado.web.Application(template_path=TEMPLATES)
    first = page(application).templates
    assert first.get_template("error.html") and page(application).templates is first
    assert application.settings["jinja_env"] is first
