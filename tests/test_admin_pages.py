"""The admin page (/admin) in a real browser: Debian's chromium driven by
Playwright, against the session's Kylon on SQLite and on MariaDB.

A failed test leaves a screenshot of its page in test-artifacts/screenshots/;
test_pages_fit_a_laptop_and_a_phone saves one of every page in both sizes.
"""

import csv
import io
import os
import re
import time
import uuid
from decimal import Decimal

import httpx
import openai
import pytest
from playwright.sync_api import expect, sync_playwright

from .fakes import openai_fake as fake_wire
from .kylon_process import ADMIN_TOKEN, ROOT

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.path.join(ROOT, "test-artifacts", "screenshots")
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
MESSAGES = [{"role": "user", "content": "Say hi"}]
# gpt-4o-mini list prices per 1M tokens: input 0.15, cached input 0.075, output 0.60.
GPT_4O_MINI_CALL = (
    (fake_wire.PROMPT_TOKENS - fake_wire.CACHED_TOKENS) * Decimal("0.15")
    + fake_wire.CACHED_TOKENS * Decimal("0.075")
    + fake_wire.COMPLETION_TOKENS * Decimal("0.60")
) / 1_000_000


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


def watched_page(browser, kylon, viewport):
    """A new context and page at `viewport`, with the console errors it logs."""
    context = browser.new_context(viewport=viewport)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=kylon.url)
    page = context.new_page()
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    return context, page, errors


@pytest.fixture
def page(browser, kylon, request):
    """A fresh browser context (no cookies) on a laptop-sized window. Console
    errors (a CSP violation shows there) fail the test; a failed test leaves
    a screenshot."""
    context, page, errors = watched_page(browser, kylon, LAPTOP)
    failed_before = request.session.testsfailed
    yield page
    failed = request.session.testsfailed > failed_before
    if failed:
        os.makedirs(SCREENSHOTS, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        page.screenshot(path=os.path.join(SCREENSHOTS, f"FAILED-{name}.png"), full_page=True)
    context.close()
    if not failed:
        # Expected refusals (401, 403) are logged by the browser as failed loads.
        unexpected = [e for e in errors if "Failed to load resource" not in e]
        assert not unexpected, f"browser console errors: {unexpected}"


def log_in(page, kylon, who="Ada"):
    page.goto(kylon.url + "/admin")
    expect(page).to_have_url(re.compile(r"/admin/login"))
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.fill("input[name=who]", who)
    page.click("button:text('Log in')")
    expect(page).to_have_url(kylon.url + "/admin")


def sdk(kylon, key):
    return openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0)


def chat(kylon, key, model="gpt-4o-mini"):
    raw = sdk(kylon, key).chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    raw.parse()
    return raw.headers["x-kylon-request-id"]


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_agent_in_page(page, name, credits="0", skills=""):
    page.click("nav >> text=Agents")
    form = page.locator("#create-agent")
    form.locator("input[name=name]").fill(name)
    form.locator("input[name=skills]").fill(skills)
    form.locator("input[name=credits]").fill(credits)
    form.locator("button[type=submit]").click()
    expect(page.locator("h1")).to_have_text(name)
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


# -- the story: agent, key, call, usage, chart, revoke -------------------


def test_agent_key_call_usage_chart_and_revoke(page, kylon, fake_openai):
    log_in(page, kylon)
    name = unique("browser-agent")
    agent_id = create_agent_in_page(page, name, credits="25")
    expect(page.locator(".flash")).to_contain_text(f"Agent '{name}' created.")
    expect(page.locator("#balance")).to_have_text("25.00")
    expect(page.locator("#ledger")).to_contain_text("initial credits")

    # The key: shown once, with a working copy button.
    page.locator("#create-key input[name=name]").fill("browser key")
    page.locator("#create-key button[type=submit]").click()
    expect(page.locator(".flash-warn")).to_contain_text("shown only this once")
    key = page.input_value("#new-key")
    assert key.startswith("pak_") and len(key) > 40
    page.click("button[data-copy=new-key]")
    expect(page.locator("button[data-copy=new-key]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == key
    prefix = key[:12]
    for path in ("/admin/keys", f"/admin/agents/{agent_id}"):
        page.goto(kylon.url + path)
        row = page.locator("tr[data-key-id]", has_text=prefix)
        expect(row).to_have_count(1)
        expect(row).to_contain_text("browser key")
        expect(row).to_contain_text("active")
        assert key not in page.content()

    # A proxied call with that key, through the fake upstream.
    request_id = chat(kylon, key)
    record = kylon.usage(request_id)
    assert Decimal(record["credits"]) == GPT_4O_MINI_CALL

    page.click("nav >> text=Usage")
    page.select_option("#usage-filters select[name=agent_id]", str(agent_id))
    page.click("#usage-filters button:text('Filter')")
    row = page.locator(f"tr[data-request-id='{request_id}']")
    expect(row).to_contain_text("gpt-4o-mini")
    expect(row).to_contain_text("completed")
    expect(row).to_contain_text(name)
    expect(page.locator("#total-requests")).to_have_text("1")
    expect(page.locator("#total-input")).to_have_text(str(fake_wire.PROMPT_TOKENS))
    expect(page.locator("#total-output")).to_have_text(str(fake_wire.COMPLETION_TOKENS))
    # Shown to the cent (issue 16: "<0.01" here); the exact figure is the hover's.
    expect(page.locator("#total-credits .money")).to_have_attribute("data-exact", f"{GPT_4O_MINI_CALL.normalize():f}")

    # The chart: one bar per hour of the last 24, this hour's counts the call.
    page.click("nav >> text=Overview")
    chart = page.locator("#usage-chart[data-drawn] svg")
    expect(chart.locator("rect.bar")).to_have_count(24)
    this_hour = chart.locator("rect.bar").last
    assert int(this_hour.get_attribute("data-requests")) >= 1
    assert Decimal(this_hour.get_attribute("data-credits")) >= GPT_4O_MINI_CALL
    assert float(this_hour.get_attribute("height")) > 0
    assert int(page.locator("#today-requests").inner_text().replace(",", "")) >= 1
    page.click(".tabs >> text=7d")
    expect(chart.locator("rect.bar")).to_have_count(7)
    assert int(chart.locator("rect.bar").last.get_attribute("data-requests")) >= 1
    expect(page.locator("#providers tr[data-provider=openai]")).to_contain_text("configured")

    # Revoke: the very next call is refused.
    page.click("nav >> text=Keys")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr[data-key-id]", has_text=prefix).locator("button:text('Revoke')").click()
    expect(page.locator(".flash")).to_contain_text(f"Key {prefix}… revoked.")
    expect(page.locator("tr[data-key-id]", has_text=prefix)).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(kylon, key)
    assert "revoked" in str(refused.value)


# -- log-in, log-out, XSRF, headers ----------------------------------------------


def test_wrong_token_is_refused(page, kylon):
    page.goto(kylon.url + "/admin/usage")
    expect(page).to_have_url(re.compile(r"/admin/login\?next=%2Fadmin%2Fusage"))
    page.fill("input[name=token]", "kat_not_the_token")
    with page.expect_response(lambda r: r.url.endswith("/admin/login")) as answer:
        page.click("button:text('Log in')")
    assert answer.value.status == 401
    expect(page.locator("#login-error")).to_have_text("Wrong admin token.")
    assert not [c for c in page.context.cookies() if c["name"] == "kylon_admin"]
    page.goto(kylon.url + "/admin/agents")
    expect(page).to_have_url(re.compile(r"/admin/login"))


def test_repeated_wrong_tokens_slow_down(kylon):
    """Per client address: the second wrong token waits about 0.5 s, the third
    about 1 s. (Sent from a loopback address of its own, 127.0.0.x, so the
    browser tests' address is not slowed.)"""
    address = "127.0.0.2" if kylon.db_kind == "sqlite" else "127.0.0.3"
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), base_url=kylon.url) as client:
        form = client.get("/admin/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text).group(1)
        took = []
        for _ in range(3):
            start = time.monotonic()
            answer = client.post("/admin/login", data={"_xsrf": xsrf, "token": "kat_wrong"})
            took.append(time.monotonic() - start)
            assert answer.status_code == 401 and "Wrong admin token." in answer.text
        assert took[0] < 0.4, took
        assert took[1] >= 0.45, took
        assert took[2] >= 0.95 and took[2] > took[1], took
    assert f"401 POST /admin/login {address}" in kylon.read_log()


def test_form_without_xsrf_token_is_refused(page, kylon):
    log_in(page, kylon)
    page.click("nav >> text=Agents")
    name = unique("forged")
    page.evaluate("document.querySelector('#create-agent input[name=_xsrf]').remove()")
    page.locator("#create-agent input[name=name]").fill(name)
    with page.expect_response(lambda r: r.url.endswith("/admin/agents") and r.request.method == "POST") as answer:
        page.locator("#create-agent button[type=submit]").click()
    assert answer.value.status == 403
    expect(page.locator("#error-message")).to_contain_text("XSRF")
    # The session cookie alone (as a cross-site form would send it) is not enough.
    forged = page.request.post(kylon.url + "/admin/agents", form={"name": name, "credits": "5"}, max_redirects=0)
    assert forged.status == 403
    wrong = page.request.post(kylon.url + "/admin/agents", form={"name": name, "_xsrf": "2|00|00|00"}, max_redirects=0)
    assert wrong.status == 403
    names = [a["name"] for a in kylon.admin("GET", "/agents").json()["data"]]
    assert name not in names


def test_session_cookie_and_log_out(page, kylon, browser):
    log_in(page, kylon, who="Grace")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "kylon_admin"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert page.evaluate("document.cookie").find("kylon_admin") == -1
    expect(page.locator(".logout")).to_contain_text("Grace")
    page.click(".logout button")
    expect(page).to_have_url(kylon.url + "/admin/login")
    expect(page.locator(".flash")).to_have_text("You are logged out.")
    page.goto(kylon.url + "/admin/keys")
    expect(page).to_have_url(re.compile(r"/admin/login"))
    # The logged-out session is gone on the server too: its cookie is worthless.
    other = browser.new_context()
    try:
        other.add_cookies([cookie])
        answer = other.request.get(kylon.url + "/admin", max_redirects=0)
        assert answer.status == 302 and answer.headers["location"].startswith("/admin/login")
    finally:
        other.close()


def test_security_headers_and_no_inline_script(page, kylon):
    answer = page.goto(kylon.url + "/admin/login")
    for response in (answer, None):
        if response is None:
            log_in(page, kylon)
            response = page.goto(kylon.url + "/admin/agents")
        headers = response.headers
        assert headers["content-type"].startswith("text/html")
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "same-origin"
        assert headers["cache-control"] == "no-store"
        html = response.text()
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
        assert not re.search(r"\son[a-z]+=", html) and " style=" not in html
        assert "http://" not in html.replace(kylon.url, "") and "https://" not in html  # nothing from elsewhere


# -- agents: skills, credits and the ledger ----------------------------------------


def test_skills_credits_and_ledger(page, kylon):
    log_in(page, kylon, who="Linus")
    agent_id = create_agent_in_page(page, unique("ledger-agent"), credits="5", skills="alpha")
    form = page.locator("#edit-agent")
    form.locator("input[name=skills]").fill("alpha, beta gamma")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash")).to_have_text("Agent saved.")
    assert kylon.admin("GET", f"/agents/{agent_id}").json()["skills"] == ["alpha", "beta", "gamma"]

    credits = page.locator("#credits")
    credits.locator("input[name=amount]").fill("10.5")
    credits.locator("input[name=note]").fill("monthly top-up")
    credits.locator("button:text('Grant')").click()
    expect(page.locator(".flash")).to_have_text("Granted 10.50 credits; balance 15.50.")
    credits.locator("input[name=amount]").fill("0.25")
    credits.locator("input[name=note]").fill("refund mistake")
    credits.locator("button:text('Deduct')").click()
    expect(page.locator("#balance")).to_have_text("15.25")
    assert kylon.balance(agent_id) == Decimal("15.25")

    rows = page.locator("#ledger tbody tr")
    expect(rows).to_have_count(3)
    newest = [c.strip() for c in rows.nth(0).locator("td").all_inner_texts()]
    assert newest[1:] == ["Linus", "-0.25", "15.25", "refund mistake"]
    grant = [c.strip() for c in rows.nth(1).locator("td").all_inner_texts()]
    assert grant[1:] == ["Linus", "+10.50", "15.50", "monthly top-up"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", newest[0])

    credits.locator("input[name=amount]").fill("lots")
    credits.locator("button:text('Grant')").click()
    expect(page.locator(".flash-error")).to_contain_text("not an amount")
    assert kylon.balance(agent_id) == Decimal("15.25")


# -- usage: filters, totals, pages, CSV ---------------------------------------------


def test_usage_filters_pages_and_csv(page, kylon, fake_openai):
    agent, key = kylon.agent_with_key("10")
    ids = [chat(kylon, key, "gpt-4o-mini"), chat(kylon, key, "gpt-4o")]
    with pytest.raises(openai.InternalServerError):
        chat(kylon, key, "error-500")
    records = kylon.usage_for_agent(agent["id"], 3)
    error_id = next(r["request_id"] for r in records if r["status"] == "upstream_error")
    credits = sum(Decimal(r["credits"]) for r in records)

    log_in(page, kylon)
    base = f"{kylon.url}/admin/usage?agent_id={agent['id']}"
    page.goto(base)
    expect(page.locator("#usage tbody tr")).to_have_count(3)
    expect(page.locator("#total-requests")).to_have_text("3")
    expect(page.locator("#total-credits .money")).to_have_attribute("data-exact", f"{credits.normalize():f}")

    page.select_option("#usage-filters select[name=status]", "upstream_error")
    page.click("#usage-filters button:text('Filter')")
    expect(page.locator("#usage tbody tr")).to_have_count(1)
    expect(page.locator(f"tr[data-request-id='{error_id}']")).to_contain_text("500")
    expect(page.locator("#total-requests")).to_have_text("1")
    expect(page.locator("#total-credits")).to_have_text("0.00")

    page.goto(base + "&model=gpt-4o&provider=openai")
    expect(page.locator("#usage tbody tr")).to_have_count(1)
    expect(page.locator(f"tr[data-request-id='{ids[1]}']")).to_have_count(1)

    page.goto(base + "&since=2999-01-01T00:00")
    expect(page.locator("text=No calls match this filter.")).to_be_visible()
    page.goto(base + "&until=2000-01-01T00:00")
    expect(page.locator("#total-requests")).to_have_text("0")
    page.goto(base + "&since=yesterday")
    expect(page.locator(".flash-error")).to_have_text("'since' must be an ISO 8601 time.")

    page.goto(base + "&per_page=2")
    expect(page.locator("#page-of")).to_have_text("Page 1 of 2")
    first_page = page.locator("#usage tbody tr").evaluate_all("rows => rows.map(r => r.dataset.requestId)")
    assert len(first_page) == 2
    page.click("a[rel=next]")
    expect(page.locator("#page-of")).to_have_text("Page 2 of 2")
    second_page = page.locator("#usage tbody tr").evaluate_all("rows => rows.map(r => r.dataset.requestId)")
    assert len(second_page) == 1 and set(first_page + second_page) == {r["request_id"] for r in records}
    expect(page.locator("#total-requests")).to_have_text("3")  # totals are the filter's, not the page's

    page.goto(base)
    export = page.request.get(kylon.url + page.get_attribute("#csv-export", "href"))
    assert export.status == 200 and export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text())))
    assert {r["request_id"] for r in rows} == {r["request_id"] for r in records}
    assert sum(Decimal(r["credits"]) for r in rows) == credits
    assert {r["status"] for r in rows} == {"completed", "upstream_error"}


# -- pricing and gates ----------------------------------------------------------------


def test_price_override_applies_at_once(page, kylon, fake_openai):
    agent, key = kylon.agent_with_key("10")
    model = unique("ui-priced-model")
    log_in(page, kylon)
    page.click("nav >> text=Pricing")
    form = page.locator("#price-form")
    form.locator("select[name=provider]").select_option("openai")
    form.locator("input[name=model]").fill(model)
    for field, value in {"input": "2", "cached_input": "1", "cache_write": "2", "output": "4", "per_unit": "0"}.items():
        form.locator(f"input[name={field}]").fill(value)
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash")).to_have_text(f"Price for openai / {model} saved.")
    row = page.locator(f"tr[data-model='openai/{model}']")
    expect(row).to_contain_text("override")

    record = kylon.usage(chat(kylon, key, model))
    plain_input = fake_wire.PROMPT_TOKENS - fake_wire.CACHED_TOKENS
    expected = (plain_input * 2 + fake_wire.CACHED_TOKENS * 1 + fake_wire.COMPLETION_TOKENS * 4) / Decimal(1_000_000)
    assert Decimal(record["credits"]) == expected and record["fallback_price"] is False

    row.locator("a:text('Edit')").click()
    expect(page.locator("#price-form input[name=model]")).to_have_value(model)
    expect(page.locator("#price-form input[name=output]")).to_have_value(re.compile(r"^4(\.0+)?$"))
    page.locator(f"tr[data-model='openai/{model}'] button:text('Remove override')").click()
    expect(page.locator(".flash")).to_have_text(f"Override for openai / {model} removed.")
    expect(page.locator(f"tr[data-model='openai/{model}']")).to_have_count(0)
    assert kylon.usage(chat(kylon, key, model))["fallback_price"] is True


def test_gate_and_skill_apply_at_once(page, kylon, fake_openai):
    agent, key = kylon.agent_with_key("10")
    skill = unique("ui-vip")
    client = sdk(kylon, key)
    log_in(page, kylon)
    try:
        page.click("nav >> text=Gates")
        form = page.locator("#gate-form")
        form.locator("select[name=provider]").select_option("openai")
        form.locator("input[name=route]").fill("/v1/responses")
        form.locator("input[name=skill]").fill(skill)
        form.locator("button[type=submit]").click()
        expect(page.locator(".flash")).to_have_text(f"openai/v1/responses now needs skill '{skill}'.")
        expect(page.locator("tr[data-gate='openai/v1/responses']")).to_contain_text(skill)

        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.responses.create(model="gpt-4o-mini", input="hi")
        assert skill in str(refused.value)
        chat(kylon, key)  # other routes are not gated

        page.goto(f"{kylon.url}/admin/agents/{agent['id']}")
        page.locator("#edit-agent input[name=skills]").fill(skill)
        page.locator("#edit-agent button[type=submit]").click()
        expect(page.locator(".flash")).to_have_text("Agent saved.")
        assert client.responses.create(model="gpt-4o-mini", input="hi").output_text

        page.click("nav >> text=Gates")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("tr[data-gate='openai/v1/responses'] button:text('Remove')").click()
        expect(page.locator(".flash")).to_have_text("Gate removed.")
        expect(page.locator("tr[data-gate='openai/v1/responses']")).to_have_count(0)
    finally:
        for gate in kylon.admin("GET", "/gates").json()["data"]:
            if gate["skill"] == skill:
                kylon.admin("DELETE", f"/gates/{gate['id']}")


# -- every page on a laptop and on a phone ---------------------------------------------


PAGES = ["/admin", "/admin/agents", "/admin/keys", "/admin/usage", "/admin/pricing", "/admin/gates", "/admin/audit",
         "/admin/top"]


def test_pages_fit_a_laptop_and_a_phone(page, kylon):
    agent, _ = kylon.agent_with_key("3")
    log_in(page, kylon)
    os.makedirs(SCREENSHOTS, exist_ok=True)
    for size_name, size in (("laptop", LAPTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        for path in PAGES + [f"/admin/agents/{agent['id']}"]:
            page.goto(kylon.url + path)
            if path == "/admin":
                expect(page.locator("#usage-chart[data-drawn] svg")).to_be_visible()
            name = re.sub(r"s/[0-9]+$", "", path).strip("/").replace("/", "-")
            if kylon.db_kind == "sqlite":  # the pages look the same on MariaDB
                page.screenshot(path=os.path.join(SCREENSHOTS, f"{size_name}-{name}.png"), full_page=True)
            # Wide tables scroll inside their card; the page itself never scrolls sideways.
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} is {overflow}px too wide on a {size_name}"
            assert page.locator(".top nav a[aria-current=page]").count() == 1
