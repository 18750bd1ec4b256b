"""Gemini's Live API through Kylon's WebSocket relay, driven by google-genai's
`client.aio.live.connect()` with only the base URL and the key changed
(the SDK always connects with wss://: these Kylons serve TLS with a
certificate made for the test, trusted through SSL_CERT_FILE).

Text and audio sessions, the usage record (tokens, credits, status, frames),
the balance; a bad key and a gate refused before the upgrade; a session
out of credits closed with 4402; either side's close reaching the other
within a second; a shutdown recording the sessions still open."""

import asyncio
import signal
import subprocess
import time
from decimal import Decimal

import httpx
import pytest
import websockets
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from prometheus_client.parser import text_string_to_metric_families

from .conftest import CREATED_SECRETS, drop_database, scratch_database_url
from .fakes import gemini_fake as fake_wire
from .kylon_process import Kylon

MODEL = "gemini-live-2.5-flash"
# gemini-live-2.5-flash per 1M tokens: input 0.50 (audio 3), output 2 (audio 12).
INPUT, AUDIO_INPUT, OUTPUT, AUDIO_OUTPUT = Decimal("0.5"), Decimal(3), Decimal(2), Decimal(12)
MILLION = 1_000_000
TEXT = {"response_modalities": ["TEXT"]}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return {"KYLON_TLS_CERT_FILE": str(cert), "KYLON_TLS_KEY_FILE": str(key)}


@pytest.fixture(autouse=True)
def trust_kylon(monkeypatch, tls_files):
    # google-genai reads it when a Client is made (its WebSocket SSL context).
    monkeypatch.setenv("SSL_CERT_FILE", tls_files["KYLON_TLS_CERT_FILE"])


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def kylon(request, tmp_path_factory, upstream_env, tls_files):
    url = scratch_database_url(request.param, tmp_path_factory)
    instance = Kylon(url, {**upstream_env, **tls_files}, name="live-" + request.param)
    yield instance
    instance.stop()
    drop_database(url)


@pytest.fixture
def fake_gemini(fakes):
    fake = fakes["gemini"]
    fake.reset()
    return fake


def new_agent(kylon, credits="10", skills=()):
    agent, key = kylon.agent_with_key(credits, skills)
    CREATED_SECRETS.add(key)
    return agent, key


def client(kylon, key):
    return genai.Client(api_key=key, http_options={"base_url": kylon.url + "/proxy/gemini"})


async def turn(session, text):
    """One text turn: the answer's text (or audio bytes) once the turn is complete."""
    await session.send_client_content(turns={"role": "user", "parts": [{"text": text}]}, turn_complete=True)
    texts, audio = [], b""
    async for message in session.receive():
        if message.text:
            texts.append(message.text)
        if message.data:
            audio += message.data
    return "".join(texts), audio


def refused_at_setup(kylon, key):
    """The error of a session Kylon closes once the setup message names the model."""
    async def talk():
        async with client(kylon, key).aio.live.connect(model=MODEL, config=TEXT):
            pass

    with pytest.raises(genai_errors.APIError) as closed:
        asyncio.run(talk())
    return closed


def only_record(kylon, agent):
    [record] = kylon.usage_for_agent(agent["id"], 1)
    return record


def wait_for(condition, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_text_session_two_turns(kylon, fake_gemini):
    agent, key = new_agent(kylon)

    async def talk():
        async with client(kylon, key).aio.live.connect(model=MODEL, config=TEXT) as session:
            return [await turn(session, "Say hi"), await turn(session, "Again")]

    answers = asyncio.run(talk())
    assert [text for text, _ in answers] == ["Hello from Gemini Live!"] * 2
    [upstream] = fake_gemini.live_sessions
    # The operator's key went upstream; no Kylon key anywhere.
    assert upstream.headers["x-goog-api-key"] == fake_gemini.api_key
    assert "pak_" not in repr(upstream.headers) + upstream.query
    assert upstream.setup["model"] == "models/" + MODEL
    record = only_record(kylon, agent)
    prompt = fake_wire.LIVE_PROMPT_TOKENS * (1 + 2)  # each turn's prompt holds the conversation so far
    output = 2 * fake_wire.LIVE_RESPONSE_TOKENS
    assert record["provider"] == "gemini" and record["route"] == "live" and record["model"] == MODEL
    assert record["status"] == "completed" and record["http_status"] == 101 and record["stream"] is True
    assert record["input_tokens"] == prompt and record["output_tokens"] == output and record["estimated"] is False
    credits = (prompt * INPUT + output * OUTPUT) / MILLION
    assert Decimal(record["credits"]) == credits
    # setup and two turns; setupComplete and per turn 4 text parts, generationComplete, turnComplete.
    assert record["client_frames"] == 3 and record["upstream_frames"] == 1 + 2 * 6
    assert upstream.frames_sent == record["upstream_frames"]
    assert wait_for(lambda: kylon.balance(agent["id"]) == Decimal(10) - credits)


def test_audio_in_and_out(kylon, fake_gemini):
    agent, key = new_agent(kylon)

    async def talk():
        config = {"response_modalities": ["AUDIO"]}
        async with client(kylon, key).aio.live.connect(model=MODEL, config=config) as session:
            await session.send_realtime_input(audio=types.Blob(data=b"\0\1" * 800, mime_type="audio/pcm;rate=16000"))
            await session.send_realtime_input(audio_stream_end=True)
            audio = b""
            async for message in session.receive():
                if message.data:
                    audio += message.data
            return audio

    audio = asyncio.run(talk())
    assert audio == fake_wire.AUDIO_CHUNK * fake_wire.AUDIO_PARTS
    record = only_record(kylon, agent)
    assert record["input_tokens"] == fake_wire.LIVE_PROMPT_TOKENS
    assert record["output_tokens"] == fake_wire.LIVE_AUDIO_TOKENS
    # Audio in and out, at the audio rates.
    credits = (fake_wire.LIVE_PROMPT_TOKENS * AUDIO_INPUT + fake_wire.LIVE_AUDIO_TOKENS * AUDIO_OUTPUT) / MILLION
    assert Decimal(record["credits"]) == credits
    assert record["client_frames"] == 3 and record["upstream_frames"] == 1 + fake_wire.AUDIO_PARTS + 2


@pytest.mark.parametrize("problem", ["unknown", "revoked", "missing"])
def test_bad_key_is_refused_before_the_upgrade(kylon, fake_gemini, problem):
    key = kylon.bad_key(problem) or "AIza-not-a-kylon-key"

    async def talk():
        async with client(kylon, key).aio.live.connect(model=MODEL, config=TEXT):
            pass

    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        asyncio.run(talk())
    assert refused.value.response.status_code == 401
    assert b"Kylon API key" in refused.value.response.body
    assert fake_gemini.live_sessions == []


def test_gate_is_checked_before_the_upgrade(kylon, fake_gemini):
    r = kylon.admin("PUT", "/gates", json={"provider": "gemini", "route": "/ws", "skill": "gemini-live"})
    assert r.status_code in (200, 201), r.text
    gate = r.json()
    try:
        agent, key = new_agent(kylon)
        allowed_agent, allowed_key = new_agent(kylon, skills=["gemini-live"])
        time.sleep(1.2)  # the gate reaches the Kylon within a cache refresh (0.5 s)

        async def talk(k):
            async with client(kylon, k).aio.live.connect(model=MODEL, config=TEXT) as session:
                return await turn(session, "Say hi")

        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            asyncio.run(talk(key))
        assert refused.value.response.status_code == 403
        assert b"gemini-live" in refused.value.response.body
        assert fake_gemini.live_sessions == []
        record = only_record(kylon, agent)
        assert record["status"] == "rejected" and record["http_status"] == 403
        assert asyncio.run(talk(allowed_key))[0] == "Hello from Gemini Live!"
    finally:
        kylon.admin("DELETE", f"/gates/{gate['id']}")


def test_out_of_credits_mid_session_closes_with_4402(kylon, fake_gemini):
    # The hold (one turn: 8192 input, 4096 output tokens, 0.012288) fits; the
    # expensive turn (100,000 prompt tokens, 0.05) does not.
    agent, key = new_agent(kylon, credits="0.02")

    async def talk():
        async with client(kylon, key).aio.live.connect(model=MODEL, config=TEXT) as session:
            await turn(session, "Something expensive")

    with pytest.raises(genai_errors.APIError) as closed:
        asyncio.run(talk())
    assert closed.value.code == 4402 and "Out of credits" in str(closed.value)
    record = only_record(kylon, agent)
    used = fake_wire.EXPENSIVE_PROMPT_TOKENS * INPUT / MILLION
    assert record["status"] == "out_of_credits" and record["http_status"] == 402
    assert record["input_tokens"] == fake_wire.EXPENSIVE_PROMPT_TOKENS and Decimal(record["credits"]) == used
    assert wait_for(lambda: kylon.balance(agent["id"]) == Decimal("0.02") - used)
    [upstream] = fake_gemini.live_sessions
    assert fake_gemini.wait_live_closed(upstream, 1.0) is not None


def test_client_close_closes_upstream_within_a_second(kylon, fake_gemini):
    agent, key = new_agent(kylon)

    async def talk():
        async with client(kylon, key).aio.live.connect(model=MODEL, config=TEXT) as session:
            await session.send_client_content(turns={"role": "user", "parts": [{"text": "hang"}]})
            await session.send_client_content(turns={"role": "user", "parts": [{"text": "hang"}]},
                                              turn_complete=True)
            await asyncio.sleep(0.2)
        return time.monotonic()

    left_at = asyncio.run(talk())
    [upstream] = fake_gemini.live_sessions
    closed_at = fake_gemini.wait_live_closed(upstream, 2.0)
    assert closed_at is not None and closed_at - left_at < 1.0
    record = only_record(kylon, agent)
    assert record["status"] == "completed" and record["client_frames"] == 3 and record["upstream_frames"] == 1


def test_client_connection_lost_closes_upstream(kylon, fake_gemini):
    agent, key = new_agent(kylon)
    ssl_context = genai.Client(api_key="x")._api_client._websocket_ssl_ctx["ssl"]
    url = kylon.url.replace("https://", "wss://") + \
        "/proxy/gemini/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"

    async def talk():
        ws = await websockets.connect(url, additional_headers={"x-goog-api-key": key}, ssl=ssl_context)
        await ws.send('{"setup": {"model": "models/%s"}}' % MODEL)
        assert b"setupComplete" in await ws.recv()
        ws.transport.abort()  # no close frame: the connection just breaks
        return time.monotonic()

    left_at = asyncio.run(talk())
    assert wait_for(lambda: fake_gemini.live_sessions and fake_gemini.live_sessions[0].closed_at, 2.0)
    assert fake_gemini.live_sessions[0].closed_at - left_at < 1.0
    record = only_record(kylon, agent)
    assert record["status"] == "disconnected" and record["error"] == "client connection lost"


def test_upstream_close_closes_the_client(kylon, fake_gemini):
    agent, key = new_agent(kylon)

    async def talk():
        async with client(kylon, key).aio.live.connect(model=MODEL, config=TEXT) as session:
            await turn(session, "Say hi")
            fake_gemini.close_live(1011, "fake upstream failure")
            started = time.monotonic()
            try:
                await turn(session, "hang")
            except genai_errors.APIError as e:
                return e, time.monotonic() - started
            return None, None

    error, waited = asyncio.run(talk())
    assert error is not None and error.code == 1011 and "fake upstream failure" in str(error)
    assert waited < 1.0
    record = only_record(kylon, agent)
    assert record["status"] == "upstream_error" and "1011 fake upstream failure" in record["error"]
    assert record["input_tokens"] == fake_wire.LIVE_PROMPT_TOKENS  # the turn it had is billed


def test_shutdown_records_open_sessions(make_kylon, fake_gemini, tls_files):
    k = make_kylon({**tls_files, "KYLON_SHUTDOWN_GRACE_SECONDS": "1"})
    agent, key = new_agent(k)

    async def talk():
        async with client(k, key).aio.live.connect(model=MODEL, config=TEXT) as session:
            await turn(session, "Say hi")
            stopped = asyncio.get_running_loop().run_in_executor(None, k.stop)
            try:
                await turn(session, "hang")
            except genai_errors.APIError as e:
                return e, await stopped
        return None, await stopped

    error, returncode = asyncio.run(talk())
    assert error is not None and error.code == 1001 and returncode == 0
    k.start()
    record = only_record(k, agent)
    assert record["status"] == "interrupted" and record["error"] == "shutdown"
    assert record["input_tokens"] == fake_wire.LIVE_PROMPT_TOKENS
    assert fake_gemini.live_sessions[0].closed_at is not None


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_a_slow_client_holds_the_upstream_back(kylon, fake_gemini):
    """The client stops reading: Kylon stops reading the upstream, whose
    writes wait; nothing piles up in Kylon. Then every frame arrives."""
    agent, key = new_agent(kylon)
    ssl_context = genai.Client(api_key="x")._api_client._websocket_ssl_ctx["ssl"]
    url = kylon.url.replace("https://", "wss://") + \
        "/proxy/gemini/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    before = rss_bytes(kylon.proc.pid)
    total = fake_wire.FLOOD_FRAMES * fake_wire.FLOOD_BYTES

    async def talk():
        async with websockets.connect(url, additional_headers={"x-goog-api-key": key}, ssl=ssl_context,
                                      max_queue=2, max_size=None) as ws:
            await ws.send('{"setup": {"model": "models/%s"}}' % MODEL)
            assert b"setupComplete" in await ws.recv()
            await ws.send('{"clientContent": {"turns": [{"role": "user", "parts": [{"text": "flood"}]}], '
                          '"turnComplete": true}}')
            await asyncio.sleep(1.5)  # not reading
            sent_while_paused = fake_gemini.live_sessions[0].frames_sent
            grown = rss_bytes(kylon.proc.pid) - before
            received = 0
            while received < fake_wire.FLOOD_FRAMES:
                await ws.recv()
                received += 1
            return sent_while_paused, grown

    sent_while_paused, grown = asyncio.run(talk())
    # The socket buffers on the way hold some tens of megabytes at most, not the 100 sent.
    assert sent_while_paused < fake_wire.FLOOD_FRAMES / 2
    assert grown < total / 4
    record = only_record(kylon, agent)
    assert record["upstream_frames"] == 1 + fake_wire.FLOOD_FRAMES


def test_sigkill_mid_session_loses_at_most_a_second(make_kylon, fake_gemini, tls_files):
    """Killed with a session open: at the next start the journal records it
    interrupted, billed for the turns it had (checkpointed each second)."""
    k = make_kylon(tls_files)
    agent, key = new_agent(k)

    async def talk():
        async with client(k, key).aio.live.connect(model=MODEL, config=TEXT) as session:
            await turn(session, "Say hi")
            await asyncio.sleep(1.5)  # a checkpoint of the journal
            k.stop(signal.SIGKILL)
            try:
                await turn(session, "hang")
            except genai_errors.APIError:
                pass

    asyncio.run(talk())
    assert k.proc.returncode == -signal.SIGKILL
    k.start()
    record = only_record(k, agent)
    credits = (fake_wire.LIVE_PROMPT_TOKENS * INPUT + fake_wire.LIVE_RESPONSE_TOKENS * OUTPUT) / MILLION
    assert record["status"] == "interrupted" and record["route"] == "live" and record["model"] == MODEL
    assert record["input_tokens"] == fake_wire.LIVE_PROMPT_TOKENS
    assert record["output_tokens"] == fake_wire.LIVE_RESPONSE_TOKENS and Decimal(record["credits"]) == credits
    assert wait_for(lambda: k.balance(agent["id"]) == Decimal(10) - credits)


def test_metrics_count_sessions_and_frames(kylon, fake_gemini):
    agent, key = new_agent(kylon)

    def scrape():
        text = httpx.get(kylon.url + "/metrics", timeout=10, verify=kylon.verify).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return families

    async def talk():
        async with client(kylon, key).aio.live.connect(model=MODEL, config=TEXT) as session:
            await turn(session, "Say hi")
            return await asyncio.get_running_loop().run_in_executor(None, scrape)

    def value(families, family, sample, **labels):
        for s in families[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return 0

    before = scrape()
    during = asyncio.run(talk())
    only_record(kylon, agent)
    after = scrape()
    open_sessions = ("kylon_open_websockets", "kylon_open_websockets")
    assert value(during, *open_sessions, provider="gemini") == value(before, *open_sessions, provider="gemini") + 1
    assert value(after, *open_sessions, provider="gemini") == value(before, *open_sessions, provider="gemini")
    frames = ("kylon_websocket_frames", "kylon_websocket_frames_total")
    for direction, count in (("client", 2), ("upstream", 7)):
        labels = {"provider": "gemini", "route": "live", "direction": direction}
        assert value(after, *frames, **labels) == value(before, *frames, **labels) + count


def test_what_a_session_uses_counts_against_the_agents_other_calls_at_once(kylon, fake_gemini):
    """Billed as it goes: after an expensive turn, with the session still open,
    the agent's next HTTP call no longer fits; once it closes, it does again."""
    agent, key = new_agent(kylon, credits="0.0722")
    http = client(kylon, key)

    def generate():
        try:
            http.models.generate_content(model="gemini-2.5-flash", contents="Say hi")
            return 200
        except genai_errors.APIError as e:
            return e.code

    async def talk():
        loop = asyncio.get_running_loop()
        async with client(kylon, key).aio.live.connect(model=MODEL, config=TEXT) as session:
            # Held for the session: 0.012288; a generateContent call holds about 0.01025.
            before = await loop.run_in_executor(None, generate)
            await turn(session, "Something expensive")  # 0.05 used
            during = await loop.run_in_executor(None, generate)
        return before, during

    assert asyncio.run(talk()) == (200, 402)
    assert generate() == 200
    live = [r for r in kylon.usage_for_agent(agent["id"], 4) if r["route"] == "live"]
    assert len(live) == 1 and live[0]["status"] == "completed"


def test_a_session_whose_hold_does_not_fit_is_closed_before_going_upstream(kylon, fake_gemini):
    agent, key = new_agent(kylon, credits="0.01")  # the hold at this model's price is 0.012288
    closed = refused_at_setup(kylon, key)
    assert closed.value.code == 4402 and "may cost up to 0.012288 credits" in str(closed.value)
    assert fake_gemini.live_sessions == []
    record = only_record(kylon, agent)
    assert record["status"] == "rejected" and record["http_status"] == 402 and record["model"] == MODEL


@pytest.mark.parametrize("upstream", ["refused", "unreachable"])
def test_an_upstream_that_refuses_or_is_down_closes_the_session_with_1014(make_kylon, fake_gemini, tls_files,
                                                                          upstream):
    env = {**tls_files}
    if upstream == "refused":
        env["GEMINI_API_KEY"] = "AIza-wrong-operator-key"  # the fake answers the handshake 400
    else:
        from .fakes.server import free_port

        env["KYLON_GEMINI_BASE_URL"] = f"http://127.0.0.1:{free_port()}"
    k = make_kylon(env)
    agent, key = new_agent(k)

    async def talk():
        async with client(k, key).aio.live.connect(model=MODEL, config=TEXT):
            pass

    with pytest.raises(genai_errors.APIError) as closed:
        asyncio.run(talk())
    assert closed.value.code == 1014
    record = only_record(k, agent)
    if upstream == "refused":
        assert "refused the session (HTTP 400)" in str(closed.value)
        assert record["status"] == "upstream_error" and record["http_status"] == 400
    else:
        assert "could not be reached" in str(closed.value)
        assert record["status"] == "error" and record["http_status"] == 502
    assert Decimal(record["credits"]) == 0


def test_a_model_the_key_may_not_call_is_closed_before_going_upstream(kylon, fake_gemini):
    """The allow-lists meet the model of the setup message (4403, nothing upstream)."""
    agent = kylon.create_agent("10")
    key = kylon.create_key(agent["id"], allowed_models=["gemini:gemini-2.5-pro*"])["key"]
    CREATED_SECRETS.add(key)
    closed = refused_at_setup(kylon, key)
    assert closed.value.code == 4403 and MODEL in str(closed.value)
    assert fake_gemini.live_sessions == []
    record = only_record(kylon, agent)
    assert record["status"] == "rejected" and record["http_status"] == 403 and record["model"] == MODEL


def test_a_key_credit_limit_bounds_a_session_like_a_call(kylon, fake_gemini):
    """A key whose credit limit cannot cover the session's hold: closed before going upstream."""
    agent = kylon.create_agent("10")
    key = kylon.create_key(agent["id"], credit_limit="0.01", limit_reset="daily")["key"]  # the hold is 0.012288
    CREATED_SECRETS.add(key)
    closed = refused_at_setup(kylon, key)
    assert closed.value.code == 4402 and "Key credit limit reached" in str(closed.value)
    assert fake_gemini.live_sessions == []


def test_rate_limits_count_sessions(kylon, fake_gemini):
    """A session is one request and one call at once: a key's second session
    in the minute meets its rpm limit before the upgrade (429, Retry-After);
    its tokens count against the tpm limit once it ends."""
    agent = kylon.create_agent("10")
    key = kylon.create_key(agent["id"], rpm_limit=1)["key"]
    CREATED_SECRETS.add(key)

    async def talk():
        async with client(kylon, key).aio.live.connect(model=MODEL, config=TEXT) as session:
            return await turn(session, "Say hi")

    if time.time() % 60 > 55:  # both sessions in one clock minute (the window)
        time.sleep(60.2 - time.time() % 60)
    assert asyncio.run(talk())[0] == "Hello from Gemini Live!"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        asyncio.run(talk())
    response = refused.value.response
    assert response.status_code == 429 and b"requests per minute" in response.body
    assert int(response.headers["Retry-After"]) >= 1
    assert len(fake_gemini.live_sessions) == 1
