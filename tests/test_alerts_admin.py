"""Webhooks in the admin API and on the admin page (in chromium): the secret
shown once and never again, each change audited without it, URLs checked,
test deliveries sent and their outcome shown."""

import json
import os
import re
import uuid

import pytest
from playwright.sync_api import expect

from .test_admin_pages import LAPTOP, PHONE, SCREENSHOTS, browser, log_in, watched_page  # noqa: F401 (fixture)
from .test_alerts import alerting, receiver  # noqa: F401 (fixtures)


def audit_of(kylon, webhook_id):
    r = kylon.admin("GET", "/audit", params={"subject": "webhook", "subject_id": webhook_id})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_webhook_api_shows_the_secret_once_and_audits_without_it(alerting, receiver):
    webhook_id, path = receiver.webhook(alerting, events=["low_balance", "key_expiring"])
    secret = receiver.secrets[path]
    assert secret.startswith("whsec_") and len(secret) > 40
    listed = [w for w in alerting.admin("GET", "/webhooks").json()["data"] if w["id"] == webhook_id]
    assert listed == [alerting.admin("GET", f"/webhooks/{webhook_id}").json()]
    assert listed[0]["url"] == f"{receiver.url}/{path}" and listed[0]["events"] == ["low_balance", "key_expiring"]
    assert listed[0]["enabled"] is True and "secret" not in listed[0]

    # An operator's own secret signs from then on (the receiver checks it).
    own = "operator-chosen-secret-0123456789"
    r = alerting.admin("PATCH", f"/webhooks/{webhook_id}", json={"secret": own, "events": []})
    assert r.status_code == 200 and "secret" not in r.json() and r.json()["events"] == []
    receiver.secrets[path] = own
    delivery_id = alerting.admin("POST", f"/webhooks/{webhook_id}/test").json()["delivery_id"]
    [got] = receiver.got(path, count=1)
    assert got["delivery"] == str(delivery_id) and got["type"] == "test" and not receiver.bad_signatures

    assert alerting.admin("PATCH", f"/webhooks/{webhook_id}", json={"enabled": False}).json()["enabled"] is False
    assert alerting.admin("POST", f"/webhooks/{webhook_id}/test").status_code == 409
    assert alerting.admin("DELETE", f"/webhooks/{webhook_id}").status_code == 204
    assert alerting.admin("GET", f"/webhooks/{webhook_id}").status_code == 404
    assert alerting.admin("GET", f"/webhooks/{webhook_id}/deliveries").status_code == 404

    entries = audit_of(alerting, webhook_id)[:4]
    assert [e["action"] for e in entries] == ["webhook.delete", "webhook.update", "webhook.update",
                                              "webhook.create"]
    assert {e["actor"] for e in entries} == {"admin api"}
    created, secret_change = entries[3]["changes"], entries[2]["changes"]
    assert created["url"] == [None, f"{receiver.url}/{path}"] and created["secret"] == [None, "(hidden)"]
    assert secret_change["secret"] == ["(hidden)", "(hidden) (replaced)"]
    assert secret_change["events"] == [["low_balance", "key_expiring"], []]
    assert entries[1]["changes"] == {"enabled": [True, False]}
    text = json.dumps(entries)
    assert secret not in text and own not in text


@pytest.mark.parametrize("body, message", [
    ({"url": "ftp://example.com/hook"}, "'url' must be an http:// or https:// address"),
    ({"url": "not a url"}, "'url' must be an http:// or https:// address"),
    ({"url": "https:///no-host"}, "'url' must be an http:// or https:// address"),
    ({}, "'url' is required"),
    ({"url": "https://example.com/h", "events": ["low_balance", "everything"]}, "Unknown event kind 'everything'"),
    ({"url": "https://example.com/h", "secret": "short"}, "'secret' must be 16 to 200 characters"),
    ({"url": "https://example.com/h", "enabled": "yes"}, "'enabled' must be true or false"),
])
def test_webhook_api_refuses_what_it_cannot_use(alerting, body, message):
    r = alerting.admin("POST", "/webhooks", json=body)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


@pytest.fixture
def page(browser, alerting, request):  # noqa: F811
    context, page, errors = watched_page(browser, alerting, LAPTOP)
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:
        os.makedirs(SCREENSHOTS, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        page.screenshot(path=os.path.join(SCREENSHOTS, f"FAILED-{name}.png"), full_page=True)
    context.close()
    assert not [e for e in errors if "Failed to load resource" not in e], errors


def test_webhooks_page_add_test_edit_disable_delete(page, alerting, receiver):
    log_in(page, alerting, who="Grace")
    page.click("nav >> text=Webhooks")
    expect(page.locator("h1")).to_have_text("Webhooks")
    path = "page-hook-" + uuid.uuid4().hex[:8]
    receiver.fail_first[path] = 0
    url = f"{receiver.url}/{path}"
    form = page.locator("#create-webhook")
    form.locator("input[name=url]").fill(url)
    form.locator("input[value=low_balance]").check()
    form.locator("button[type=submit]").click()

    # The secret, this once, with a copy button.
    expect(page.locator("#webhook-created .flash-warn")).to_contain_text("shown only this once")
    secret = page.input_value("#new-secret")
    assert secret.startswith("whsec_")
    receiver.secrets[path] = secret
    card = page.locator("section.webhook", has_text=url)
    expect(card).to_contain_text("enabled")
    expect(card.locator(".tag", has_text="low_balance")).to_have_count(1)

    page.goto(alerting.url + "/admin/webhooks")
    assert secret not in page.content()
    card = page.locator("section.webhook", has_text=url)
    webhook_id = int(card.get_attribute("data-webhook"))

    # A test delivery: queued, then delivered (the receiver checked its signature).
    card.locator("button:text('Send test')").click()
    expect(page.locator(".flash")).to_contain_text("Test delivery queued")
    receiver.got(path, count=1)
    page.reload()
    row = page.locator("section.webhook", has_text=url).locator("tr[data-delivery]").first
    expect(row).to_contain_text("test delivery")
    expect(row.locator(".outcome")).to_contain_text("delivered")
    expect(row).to_contain_text("HTTP 200")

    # Edit: every event, a new secret.
    card = page.locator("section.webhook", has_text=url)
    card.locator("summary:text('Edit')").click()
    edit = card.locator("form.edit-webhook")
    edit.locator("input[value=low_balance]").uncheck()
    edit.locator("input[name=secret]").fill("a-new-secret-typed-in-the-page")
    edit.locator("button:text('Save')").click()
    expect(page.locator(".flash")).to_contain_text(f"Webhook {url} saved.")
    expect(page.locator("section.webhook", has_text=url).locator(".tag", has_text="every event")).to_have_count(1)

    # On a phone the page does not scroll sideways (wide tables scroll in their card).
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    page.set_viewport_size(LAPTOP)

    # Disable, then delete (after the confirmation).
    page.locator("section.webhook", has_text=url).locator("button:text('Disable')").click()
    expect(page.locator(".flash")).to_contain_text(f"Webhook {url} disabled.")
    card = page.locator("section.webhook", has_text=url)
    expect(card.locator(".badge.off")).to_have_text("disabled")
    expect(card.locator("button:text('Send test')")).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())
    card.locator("button:text('Delete')").click()
    expect(page.locator(".flash")).to_contain_text(f"Webhook {url} deleted.")
    expect(page.locator("section.webhook", has_text=url)).to_have_count(0)

    # (SQLite gives a deleted webhook's id to the next one: the newest four are this one's.)
    entries = audit_of(alerting, webhook_id)[:4]
    assert [e["action"] for e in entries] == ["webhook.delete", "webhook.update", "webhook.update",
                                              "webhook.create"]
    assert {e["actor"] for e in entries} == {"Grace"}
    assert "a-new-secret-typed-in-the-page" not in json.dumps(entries) and secret not in json.dumps(entries)


def test_a_bad_url_in_the_page_is_refused(page, alerting):
    log_in(page, alerting)
    page.goto(alerting.url + "/admin/webhooks")
    form = page.locator("#create-webhook")
    # type=url lets "ftp://" through in the browser: Kylon refuses it.
    form.locator("input[name=url]").fill("ftp://example.com/alerts")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash-error")).to_contain_text("'url' must be an http:// or https:// address")
    expect(page.locator("section.webhook", has_text="ftp://example.com/alerts")).to_have_count(0)
