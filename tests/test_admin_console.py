"""The admin page as an operator's console (issue 16), in Debian's chromium
driven by Playwright, on a desktop (1400×900) and a phone (390×844), against
the session's Kylon on SQLite and MariaDB.

A failed test saves a full-page screenshot in its pytest tmp dir and prints
the path.
"""

import csv
import io
import re
from decimal import Decimal

import openai
import pytest
from playwright.sync_api import expect

from .test_admin_pages import browser, chat, log_in, unique, watched_page  # noqa: F401 (browser: the fixture)

DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
SIZES = {"desktop": DESKTOP, "phone": PHONE}
PAGES = ["/admin", "/admin?range=30d&by=model", "/admin/agents", "/admin/keys", "/admin/usage",
         "/admin/usage?group=model", "/admin/pricing", "/admin/gates", "/admin/audit", "/admin/top?range=30d"]


@pytest.fixture(params=list(SIZES))
def size(request):
    return request.param


@pytest.fixture
def page(browser, kylon, size, request, tmp_path):  # noqa: F811
    """A fresh context at the test's size; console errors fail the test, a
    failed test leaves a screenshot (its path printed)."""
    context, page, errors = watched_page(browser, kylon, SIZES[size])
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:
        path = tmp_path / "failed.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"\nscreenshot of the failed page: {path}")
    else:
        unexpected = [e for e in errors if "Failed to load resource" not in e]
        assert not unexpected, f"browser console errors: {unexpected}"
    context.close()


def open_filters(page):
    """On a phone the usage filters are folded behind their button."""
    box = page.locator("#filters-box")
    if box.get_attribute("open") is None:
        page.click("#filters-box summary")


def named_agent(kylon, credits):
    return kylon.create_agent(credits, name=unique("console"))


def spend_story(kylon, fake_openai):
    """An agent with a key making a dear call (a model priced for this test,
    so that it tops the session's lists), a cheap one and one the upstream
    fails, and an agent deep below zero whose call is refused (402)."""
    dear = unique("dear-model")
    price = {"provider": "openai", "model": dear, "input": "100000", "output": "100000"}
    assert kylon.admin("PUT", "/prices", json=price).status_code == 200
    # Enough for the dear call's hold (its 4,096 default output tokens at 100,000 a million).
    rich = named_agent(kylon, "1000")
    key = kylon.create_key(rich["id"], name=unique("key"))
    ids = [chat(kylon, key["key"], dear), chat(kylon, key["key"], "gpt-4o-mini")]
    with pytest.raises(openai.InternalServerError):
        chat(kylon, key["key"], "error-500")
    kylon.admin("DELETE", "/prices", params={"provider": "openai", "model": dear})
    broke = named_agent(kylon, "0")
    kylon.admin("POST", f"/agents/{broke['id']}/credits", json={"amount": "-100000", "note": "test: far below zero"})
    broke_key = kylon.create_key(broke["id"], name="dry")
    with pytest.raises(openai.APIStatusError) as refused:
        chat(kylon, broke_key["key"])
    assert refused.value.status_code == 402
    records = kylon.usage_for_agent(rich["id"], 3)
    refused_record = kylon.usage_for_agent(broke["id"], 1)[0]
    return {"rich": rich, "key": key, "ids": ids, "dear": dear, "records": records, "broke": broke, "refused": refused_record}


def parts(story):
    return (story[k] for k in ("rich", "key", "ids", "records", "broke", "refused"))


# -- the overview ----------------------------------------------------------------


def test_overview_spend_by_provider_and_model_top_lists_failures_low_balances(page, kylon, fake_openai):
    story = spend_story(kylon, fake_openai)
    rich, key, ids, records, broke, refused = parts(story)
    log_in(page, kylon)
    stacked = page.locator("#stacked-chart[data-drawn] svg")
    expect(stacked.locator("rect.seg").first).to_be_attached()
    groups = set(stacked.locator("rect.seg").evaluate_all("s => s.map(x => x.dataset.group)"))
    assert "openai" in groups
    page.locator(".tabs >> text=model").first.click()
    expect(page).to_have_url(re.compile(r"by=model"))
    groups = set(page.locator("#stacked-chart[data-drawn] rect.seg").evaluate_all("s => s.map(x => x.dataset.group)"))
    assert story["dear"] in groups
    page.locator(".tabs >> text=30d").first.click()
    expect(page.locator("#stacked-chart[data-drawn]")).to_be_attached()

    # Top agents and models link to the filtered usage.
    row = page.locator(f"#top-agents tr[data-agent-id='{rich['id']}']")
    expect(row).to_contain_text(rich["name"])
    row.locator("td.num a").click()
    expect(page).to_have_url(re.compile(rf"/admin/usage\?.*agent_id={rich['id']}"))
    expect(page.locator("#total-requests")).to_have_text("3")
    page.go_back()
    page.locator(f"#top-models tr[data-model='openai/{story['dear']}'] a").click()
    expect(page).to_have_url(re.compile(rf"model={story['dear']}"))
    expect(page.locator("#usage tbody tr")).to_have_count(1)
    page.go_back()

    # Failures, with the error rate; the refused agent among the balances to watch.
    expect(page.locator("#failures tr[data-status=rejected]")).to_be_visible()
    expect(page.locator("#failures tr[data-status=upstream_error]")).to_be_visible()
    assert re.match(r"\d+\.\d%$", page.locator("#error-rate").inner_text())
    low = page.locator(f"#low-agents tr[data-agent-id='{broke['id']}']")
    expect(low).to_contain_text("exhausted")
    expect(low.locator(".badge")).to_have_class(re.compile("state-exhausted"))
    page.click("#error-rate a")
    expect(page).to_have_url(re.compile(r"status=failed"))
    statuses = set(page.locator("#usage tbody tr").evaluate_all("rows => rows.map(r => r.dataset.status)"))
    assert statuses and "completed" not in statuses


# -- the agent page and the agents list ---------------------------------------------


def test_agent_page_spend_by_model_and_key_and_balance_state(page, kylon, fake_openai):
    story = spend_story(kylon, fake_openai)
    rich, key, ids, records, broke, refused = parts(story)
    log_in(page, kylon)
    page.goto(f"{kylon.url}/admin/agents/{rich['id']}")
    expect(page.locator("#agent-chart[data-drawn] rect.seg").first).to_be_attached()
    spent = sum(Decimal(r["credits"]) for r in records)
    assert Decimal(page.locator("#agent-spend .money").get_attribute("data-exact")) == spent
    expect(page.locator("#agent-models tr[data-model='openai/gpt-4o-mini']")).to_be_visible()
    by_key = page.locator(f"#agent-keys-spend tr[data-key-id='{key['id']}']")
    expect(by_key).to_contain_text(key["prefix"])
    expect(by_key).to_contain_text("3")
    keys_row = page.locator(f"table.keys tr[data-key-id='{key['id']}']")
    assert Decimal(keys_row.locator(".money").get_attribute("data-exact")) == spent
    expect(page.locator("#balance")).to_have_class(re.compile("state-healthy"))
    expect(page.locator(".stat .badge.state-healthy")).to_have_text("healthy")

    page.goto(f"{kylon.url}/admin/agents/{broke['id']}")
    expect(page.locator("#balance")).to_have_class(re.compile("state-exhausted"))
    expect(page.locator(".stat .badge")).to_have_text("exhausted")
    expect(page.locator(".stat").first).to_contain_text("low under")
    low = named_agent(kylon, "0.5")
    page.goto(f"{kylon.url}/admin/agents/{low['id']}")
    expect(page.locator("#balance")).to_have_class(re.compile("state-low"))


def test_agents_list_figures_search_and_sort(page, kylon, fake_openai):
    story = spend_story(kylon, fake_openai)
    rich, key, ids, records, broke, refused = parts(story)
    log_in(page, kylon)
    page.goto(kylon.url + "/admin/agents?" + f"q={rich['name']}")
    rows = page.locator("#agents tbody tr")
    expect(rows).to_have_count(1)
    cells = rows.first
    expect(cells).to_contain_text(rich["name"])
    assert Decimal(cells.locator("td").nth(7).locator(".money").get_attribute("data-exact")) == sum(
        Decimal(r["credits"]) for r in records
    )
    expect(cells.locator("td").nth(8)).to_have_text("3")
    expect(cells.locator("td").nth(9)).to_have_text("33.3%")
    page.goto(kylon.url + "/admin/agents?sort=balance&dir=asc")
    states = page.locator("#agents tbody tr").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert states[0] == "exhausted"


def test_agent_names_are_unique(page, kylon):
    agent = named_agent(kylon, "1")
    again = kylon.admin("POST", "/agents", json={"name": agent["name"].upper(), "credits": "1"})
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]
    log_in(page, kylon)
    page.click("nav >> text=Agents")
    page.locator("#create-agent input[name=name]").fill(agent["name"])
    page.locator("#create-agent button[type=submit]").click()
    expect(page.locator(".flash-error")).to_contain_text(f"An agent named '{agent['name']}' already exists")
    other = named_agent(kylon, "1")
    page.goto(f"{kylon.url}/admin/agents/{other['id']}")
    page.locator("#edit-agent input[name=name]").fill(agent["name"])
    page.locator("#edit-agent button[type=submit]").click()
    expect(page.locator(".flash-error")).to_contain_text("already exists")
    assert kylon.admin("PATCH", f"/agents/{other['id']}", json={"name": agent["name"]}).status_code == 409


# -- usage ---------------------------------------------------------------------------


def test_usage_keys_reasons_detail_groups_and_csv(page, kylon, fake_openai):
    story = spend_story(kylon, fake_openai)
    rich, key, ids, records, broke, refused = parts(story)
    log_in(page, kylon)
    page.goto(f"{kylon.url}/admin/usage")
    open_filters(page)
    page.select_option("#usage-filters select[name=key_id]", str(key["id"]))
    page.click("#usage-filters button:text('Filter')")
    expect(page.locator("#usage tbody tr")).to_have_count(3)
    expect(page.locator("#usage tbody tr").first).to_contain_text(key["prefix"])
    failed = next(r for r in records if r["status"] == "upstream_error")
    assert failed["error"]
    expect(page.locator(f"tr[data-request-id='{failed['request_id']}'] .reason")).to_have_text(failed["error"])

    page.goto(f"{kylon.url}/admin/usage?agent_id={broke['id']}")
    row = page.locator(f"tr[data-request-id='{refused['request_id']}']")
    expect(row.locator(".reason")).to_contain_text("credits")
    expect(row).to_contain_text("402")

    # The detail view: every field.
    page.goto(f"{kylon.url}/admin/usage?key_id={key['id']}")
    page.locator(f"tr[data-request-id='{ids[1]}'] a.detail").click()
    expect(page).to_have_url(f"{kylon.url}/admin/usage/{ids[1]}")
    fields = page.locator("#record-fields")
    expect(fields.locator("dd[data-field=upstream_request_id]")).to_have_text("req_fake_chat")
    expect(fields.locator("dd[data-field=ttfb_ms]")).to_have_text(re.compile(r"^\d+$"))
    expect(fields.locator("dd[data-field=key_id]")).to_have_text(str(key["id"]))
    assert fields.locator("dt").count() >= 24

    # Groups, with totals.
    for group, label in (("day", r"\d{4}-\d\d-\d\d"), ("agent", rich["name"]), ("key", key["prefix"]), ("model", story["dear"])):
        page.goto(f"{kylon.url}/admin/usage?agent_id={rich['id']}&group={group}")
        expect(page.locator("#usage-groups tbody tr").first).to_contain_text(re.compile(label))
        expect(page.locator("#usage-groups tfoot")).to_contain_text("3")
    page.locator("#usage-groups tbody tr[data-group='openai/gpt-4o-mini'] a").click()
    expect(page.locator("#usage tbody tr")).to_have_count(1)

    export = page.request.get(f"{kylon.url}/admin/usage.csv?agent_id={rich['id']}")
    text = export.text()
    assert "E-" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["agent_name"] for r in rows} == {rich["name"]}
    assert all(r["key_name"].startswith(key["prefix"]) for r in rows)
    assert all(re.match(r"^\d+\.\d{9}$", r["credits"]) for r in rows)
    assert sum(Decimal(r["credits"]) for r in rows) == sum(Decimal(r["credits"]) for r in records)


def test_money_is_shown_one_way(page, kylon, fake_openai):
    story = spend_story(kylon, fake_openai)
    rich, key, ids, records, broke, refused = parts(story)
    log_in(page, kylon)
    for path in ("/admin", f"/admin/agents/{rich['id']}", "/admin/agents", f"/admin/usage?agent_id={rich['id']}", "/admin/keys"):
        page.goto(kylon.url + path)
        money = page.locator(".money")
        assert money.count() > 0, path
        texts = money.evaluate_all("ms => ms.map(m => m.textContent)")
        assert all(re.match(r"^\d{1,3}(,\d{3})*\.\d\d$", t) for t in texts), (path, texts)
        assert money.first.evaluate("m => getComputedStyle(m, '::before').content") == '"$"'
        exact = money.evaluate_all("ms => ms.map(m => [m.dataset.exact, m.title])")
        assert all(title == f"exactly ${e.lstrip('-')}" or title == f"exactly -${e.lstrip('-')}" for e, title in exact)
    # A call costs less than a cent: never shown as 0.00, the exact figure on hover.
    page.goto(f"{kylon.url}/admin/usage?agent_id={rich['id']}&model=gpt-4o-mini")
    cell = page.locator(f"tr[data-request-id='{ids[1]}'] td").nth(8)
    expect(cell).to_have_text(re.compile(r"^<0\.01"))
    cheap = next(r for r in records if r["request_id"] == ids[1])
    assert Decimal(cell.locator(".money").get_attribute("data-exact")) == Decimal(cheap["credits"])


# -- pricing and keys ----------------------------------------------------------------


def test_pricing_search_defaults_and_overrides(page, kylon):
    model = unique("console-model")
    assert kylon.admin("PUT", "/prices", json={"provider": "openai", "model": "gpt-4o-mini", "output": "9"}).status_code == 200
    try:
        log_in(page, kylon)
        page.goto(kylon.url + "/admin/pricing")
        expect(page.locator("#price-data")).to_contain_text("price")
        page.fill("#price-search input[name=q]", "4o-mini")
        page.click("#price-search button")
        rows = page.locator("#prices tbody tr")
        models = rows.evaluate_all("rows => rows.map(r => r.dataset.model)")
        assert models and all("4o-mini" in m for m in models)
        row = page.locator("tr[data-model='openai/gpt-4o-mini']")
        expect(row.locator(".badge")).to_have_text("override")
        expect(row.locator("td.overridden")).to_have_count(1)
        expect(row.locator("td.overridden")).to_contain_text("default 0.6")
        page.goto(kylon.url + f"/admin/pricing?q={model}")
        expect(page.locator("#prices")).to_contain_text("No model matches")
    finally:
        kylon.admin("DELETE", "/prices", params={"provider": "openai", "model": "gpt-4o-mini"})


def test_keys_filter_and_every_sdk_snippet(page, kylon):
    agent = named_agent(kylon, "5")
    soon = kylon.create_key(agent["id"], name="soon", expires_at="2999-01-01T00:00:00Z")
    revoked = kylon.create_key(agent["id"], name="gone")
    kylon.admin("DELETE", f"/keys/{revoked['id']}")
    log_in(page, kylon)
    page.goto(kylon.url + "/admin/keys")
    page.locator("#create-key select[name=agent_id]").select_option(str(agent["id"]))
    page.locator("#create-key input[name=name]").fill("expiring")
    page.locator("#create-key input[name=expires_at]").fill(
        page.evaluate("new Date(Date.now() + 3 * 86400e3).toISOString().slice(0, 16).replace('T', ' ')")
    )
    page.locator("#create-key button[type=submit]").click()
    key = page.input_value("#new-key")
    for sdk in ("openai", "anthropic", "google-genai", "cerebras", "elevenlabs"):
        snippet = page.locator(f"#snippet-{sdk}")
        expect(snippet).to_contain_text(key)
        expect(snippet).to_contain_text(kylon.url + "/proxy/")
    page.click("button[data-copy=snippet-anthropic]")
    assert key in page.evaluate("navigator.clipboard.readText()")

    for state, present, absent in (("active", soon, revoked), ("revoked", revoked, soon)):
        page.goto(kylon.url + f"/admin/keys?state={state}")
        expect(page.locator(f"tr[data-key-id='{present['id']}']")).to_have_count(1)
        expect(page.locator(f"tr[data-key-id='{absent['id']}']")).to_have_count(0)
    page.goto(kylon.url + "/admin/keys?state=expiring")
    states = page.locator("table.keys tbody tr").evaluate_all("rows => rows.map(r => r.textContent)")
    assert states and all("in " in s for s in states)
    expect(page.locator(f"tr[data-key-id='{soon['id']}']")).to_have_count(0)
    assert key not in page.content()


# -- every page at 390 px ------------------------------------------------------------


def test_no_table_overflows_a_phone(page, kylon, fake_openai, size):
    story = spend_story(kylon, fake_openai)
    rich, key, ids, records, broke, refused = parts(story)
    log_in(page, kylon)
    paths = PAGES + [f"/admin/agents/{rich['id']}", f"/admin/usage/{ids[0]}", f"/admin/usage?group=key&agent_id={rich['id']}",
                     f"/admin/keys/{key['id']}"]
    for path in paths:
        page.goto(kylon.url + path)
        width = page.evaluate("window.innerWidth")
        wide = page.evaluate(
            """() => [...document.querySelectorAll('table')].map(t => {
                 const r = t.getBoundingClientRect(), wrap = t.closest('.table-wrap');
                 return [t.id || t.className, Math.round(r.right), wrap ? wrap.scrollWidth - wrap.clientWidth : 0];
               })"""
        )
        if size == "phone":
            too_wide = [w for w in wide if w[1] > width or w[2] > 0]
            assert not too_wide, f"{path}: tables wider than {width}px: {too_wide}"
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0, path
        nav = page.locator(".top nav a").evaluate_all("links => links.map(a => a.getBoundingClientRect().right)")
        assert max(nav) <= width, path
    if size == "phone":
        page.goto(kylon.url + "/admin/usage")
        expect(page.locator("#usage-filters")).to_be_hidden()
        page.click("#filters-box summary")
        expect(page.locator("#usage-filters select[name=agent_id]")).to_be_visible()
        rows = page.locator(".top nav a").evaluate_all("links => new Set(links.map(a => a.getBoundingClientRect().top)).size")
        assert rows <= 2
