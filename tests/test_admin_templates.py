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


def test_audit_entries_show_each_field_before_and_after():
    env = template_environment(TEMPLATES)
    template = env.from_string('{% from "_macros.html" import audit_table %}{{ audit_table(entries) }}')
    entries = [{"id": 7, "actor": "<b>Ada</b>", "action": "key.update", "subject": "key", "subject_id": "3",
                "created_at": "2026-12-02T12:00:00Z",
                "changes": {"rpm_limit": [None, 60], "allowed_models": [["a*"], ["a*", "b*"]], "name": ["x", "<i>y</i>"]}}]
    html = template.render(entries=entries)
    assert '<li data-field="rpm_limit"><code>rpm_limit</code>: — → 60</li>' in html
    assert "<code>allowed_models</code>: a* → a*, b*" in html
    assert "&lt;i&gt;y&lt;/i&gt;" in html and "&lt;b&gt;Ada&lt;/b&gt;" in html and "<i>" not in html
    assert '<a href="/admin/keys/3">key #3</a>' in html


def test_a_key_credit_period_shows_spent_limit_and_reset():
    env = template_environment(TEMPLATES)
    template = env.from_string('{% from "_macros.html" import credit_period %}{{ credit_period(p) }}')
    near = {"spent": "0.9", "limit": "1.000000000", "share": 0.9, "reset": "monthly",
            "resets_at": "2027-01-01T00:00:00Z", "near": True}
    html = template.render(p=near)
    assert 'data-exact="0.9">0.90</span> / ' in html and ">1.00</span>" in html
    assert '<span class="badge warn">90%</span>' in html and "monthly, resets 2027-01-01 00:00:00" in html
    html = template.render(p={**near, "share": 0.5, "near": False, "resets_at": None, "reset": "none"})
    assert "badge" not in html and "never resets" in html
    assert "none" in template.render(p=None)
