"""Kylon behind a real nginx configured by deploy/nginx.conf.

The test runs Debian's nginx as a child process (not a daemon) with a scratch
prefix: deploy/nginx.conf is included as it is shipped, except for its ports
(to free ones), its upstream address (a Kylon subprocess started with
KYLON_TRUST_PROXY_HEADERS=1) and its certificate (made here for 127.0.0.1).
The clients talk HTTPS to nginx; some from 127.0.0.2, to tell the client's
address from nginx's.
"""

import datetime
import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import httpx
import openai
import pytest

from .fakes.server import free_port
from .kylon_process import ADMIN_TOKEN, ROOT, Kylon

CONF = os.path.join(ROOT, "deploy", "nginx.conf")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLIENT_ADDRESS = "127.0.0.2"
MESSAGES = [{"role": "user", "content": "Say hi"}]


def self_signed_certificate(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def substitute(text, pattern, replacement):
    """Replace what must be in the shipped file exactly once."""
    result, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, f"deploy/nginx.conf no longer has exactly one match for {pattern!r}"
    return result


def front_config(shipped, kylon_ports, http_port, https_port, cert, key):
    """The shipped file with its ports; several Kylon ports make the upstream
    block list several servers (several processes on one database)."""
    servers = ";\n    server ".join(f"127.0.0.1:{port}" for port in kylon_ports)
    conf = substitute(shipped, r"^([ \t]*server[ \t]+)127\.0\.0\.1:8080;", rf"\g<1>{servers};")
    conf = substitute(conf, r"^([ \t]*listen[ \t]+)80;", rf"\g<1>127.0.0.1:{http_port};")
    conf = substitute(conf, r"^([ \t]*listen[ \t]+)443 ssl;", rf"\g<1>127.0.0.1:{https_port} ssl;")
    conf = substitute(conf, r"^([ \t]*ssl_certificate[ \t]+)\S+;", rf"\g<1>{cert};")
    conf = substitute(conf, r"^([ \t]*ssl_certificate_key[ \t]+)\S+;", rf"\g<1>{key};")
    return conf


def wrapper_config(prefix):
    """The main nginx.conf around the shipped file: everything in the prefix."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind}_temp;" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would switch to "nobody", who cannot use the prefix.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
{temp}
    include {prefix}/kylon.conf;
}}
"""


def wait_for_port(port, proc, log_path, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path) as f:
                raise RuntimeError(f"nginx exited:\n{f.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start listening")


class Front:
    def __init__(self, kylon, prefix):
        """nginx in front of a Kylon (or of a list of Kylon processes)."""
        kylons = kylon if isinstance(kylon, list) else [kylon]
        self.kylon = kylon
        self.prefix = str(prefix)
        self.http_port, self.https_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.https_port}"
        self.cert, key = self_signed_certificate(self.prefix)
        with open(CONF) as f:
            shipped = f.read()
        with open(os.path.join(self.prefix, "kylon.conf"), "w") as f:
            f.write(front_config(shipped, [k.port for k in kylons], self.http_port, self.https_port, self.cert, key))
        with open(os.path.join(self.prefix, "nginx.conf"), "w") as f:
            f.write(wrapper_config(self.prefix))
        self.error_log = os.path.join(self.prefix, "error.log")
        self.proc = subprocess.Popen(
            [NGINX, "-p", self.prefix, "-c", os.path.join(self.prefix, "nginx.conf"), "-e", self.error_log,
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.prefix, "stderr.log"), "wb"),
        )
        wait_for_port(self.https_port, self.proc, os.path.join(self.prefix, "stderr.log"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tls(self):
        return ssl.create_default_context(cafile=self.cert)

    def http(self, address=CLIENT_ADDRESS, **kwargs):
        transport = httpx.HTTPTransport(local_address=address, verify=self.tls())
        return httpx.Client(transport=transport, timeout=10, **kwargs)

    def sdk(self, key, address=CLIENT_ADDRESS):
        return openai.OpenAI(
            base_url=self.url + "/proxy/openai/v1", api_key=key, max_retries=0, timeout=10,
            http_client=self.http(address),
        )


@pytest.fixture(scope="module")
def behind_nginx(tmp_path_factory, upstream_env):
    database = "sqlite:///" + str(tmp_path_factory.mktemp("nginx-db") / "kylon.db")
    kylon = Kylon(database, {**upstream_env, "KYLON_TRUST_PROXY_HEADERS": "1"}, name="behind-nginx")
    try:
        front = Front(kylon, tmp_path_factory.mktemp("nginx"))
        try:
            yield kylon, front
        finally:
            front.stop()
    finally:
        kylon.stop()


def test_stream_chunks_arrive_one_by_one(behind_nginx, fake_openai):
    kylon, front = behind_nginx
    _, key = kylon.agent_with_key("10")
    fake_openai.release.clear()
    try:
        with front.sdk(key).chat.completions.with_streaming_response.create(
            model="held-stream", messages=MESSAGES, stream=True
        ) as response:
            request_id = response.headers["x-kylon-request-id"]
            chunks = iter(response.parse())
            first = [next(chunks), next(chunks)]
            # The upstream holds the rest back until released: these chunks
            # came through nginx on their own.
            assert not fake_openai.release.is_set()
            assert first[1].choices[0].delta.content == "Hello"
            fake_openai.release.set()
            rest = list(chunks)
    finally:
        fake_openai.release.clear()
    text = "".join(c.choices[0].delta.content or "" for c in first + rest if c.choices)
    assert text == "Hello from the fake upstream!"
    record = kylon.usage(request_id)
    assert record["status"] == "completed" and record["stream"] is True


def test_client_disconnect_stops_the_upstream(behind_nginx, fake_openai):
    kylon, front = behind_nginx
    _, key = kylon.agent_with_key("10")
    with front.sdk(key).chat.completions.with_streaming_response.create(
        model="silent-stream", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        next(iter(response.parse()))
        received = fake_openai.last()
        assert received.closed_at is None
        left_at = time.monotonic()
    # client → nginx closed; nginx → Kylon closes; Kylon → upstream closes.
    closed_at = fake_openai.wait_closed(received, timeout=5)
    assert closed_at is not None and closed_at - left_at < 2
    assert kylon.usage(request_id)["status"] == "disconnected"


def test_kylon_logs_the_real_client_address(behind_nginx, fake_openai):
    kylon, front = behind_nginx
    _, key = kylon.agent_with_key("10")
    # Headers a client made up are replaced by nginx's.
    with front.http(headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}) as client:
        answer = client.post(
            front.url + "/proxy/openai/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert answer.status_code == 200
    request_id = answer.headers["x-kylon-request-id"]
    kylon.usage(request_id)
    access = [line for line in kylon.read_log().splitlines() if "tornado.access" in line]
    (line,) = [line for line in access if line.endswith(request_id)]
    assert "200 POST /proxy/openai/v1/chat/completions" in line
    assert f" {CLIENT_ADDRESS} " in line and "203.0.113.9" not in line
    # Nothing of the client's forwarding headers reaches the provider either.
    received = fake_openai.last()
    assert "203.0.113.9" not in received.everything() and CLIENT_ADDRESS not in received.everything()


def test_admin_cookie_is_secure_behind_https(behind_nginx):
    """X-Forwarded-Proto tells Kylon the client used HTTPS: the session cookie gets Secure."""
    kylon, front = behind_nginx
    with front.http(follow_redirects=False) as client:
        form = client.get(front.url + "/admin/login")
        assert form.status_code == 200
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text).group(1)
        answer = client.post(front.url + "/admin/login", data={"_xsrf": xsrf, "token": ADMIN_TOKEN})
    assert answer.status_code == 302 and answer.headers["location"] == "/admin"
    (cookie,) = [c for c in answer.headers.get_list("set-cookie") if c.startswith("kylon_admin=")]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_plain_http_is_sent_to_https_and_large_admin_bodies_are_refused(behind_nginx):
    kylon, front = behind_nginx
    answer = httpx.get(f"http://127.0.0.1:{front.http_port}/admin", follow_redirects=False)
    assert answer.status_code == 301 and answer.headers["location"] == "https://127.0.0.1/admin"
    with front.http() as client:
        too_big = client.post(front.url + "/admin/login", content=b"x" * (2 * 1024 * 1024))
    assert too_big.status_code == 413
    with front.http() as client:
        metrics = client.get(front.url + "/metrics")
    assert metrics.status_code == 403  # only scraped from inside
    assert httpx.get(kylon.url + "/metrics").status_code == 200


def test_gemini_live_session_through_nginx(behind_nginx, fakes, monkeypatch):
    """google-genai dials wss:// to nginx, which upgrades the connection to Kylon's relay."""
    import asyncio

    from google import genai

    kylon, front = behind_nginx
    fakes["gemini"].reset()
    agent, key = kylon.agent_with_key("10")
    monkeypatch.setenv("SSL_CERT_FILE", front.cert)
    client = genai.Client(api_key=key, http_options={"base_url": front.url + "/proxy/gemini"})

    async def talk():
        async with client.aio.live.connect(model="gemini-live-2.5-flash",
                                           config={"response_modalities": ["TEXT"]}) as session:
            await session.send_client_content(turns={"role": "user", "parts": [{"text": "Say hi"}]})
            return "".join([m.text async for m in session.receive() if m.text])

    assert asyncio.run(talk()) == "Hello from Gemini Live!"
    [record] = kylon.usage_for_agent(agent["id"], 1)
    assert record["route"] == "live" and record["status"] == "completed" and record["upstream_frames"] == 7
