"""A fake Vertex AI serving Claude (`…/publishers/anthropic/models/{model}:rawPredict`
and `:streamRawPredict`, `…/models/count-tokens:rawPredict`), plus a fake
Google OAuth2 token endpoint.

The service-account key files are real: RSA keys made on the fly, whose
`token_uri` points at this fake. The token endpoint takes google-auth's
JWT-bearer grant, checks the assertion's RS256 signature with the account's
public key, its audience, scope and expiry, and hands out `ya29.fake-<n>` tokens with
the account's lifetime. The Vertex routes accept only a token it issued and
that has not expired (or the static token), in Google's error shape otherwise,
and reject a body still holding `model` or lacking `anthropic_version`, as the
Anthropic-on-Vertex API does. Answers are the Anthropic fake's.

Accounts: "default" (tokens live an hour), "short" (2 s: every call refreshes),
"ahead" (120 s: inside Kylon's refresh-ahead window, so it refreshes in the
background while calls go on with the current token).
"""

import base64
import json
import os
import shutil
import tempfile
import threading
import time
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .anthropic_fake import CountTokensHandler, MessagesHandler
from .server import FakeServer, RecordingHandler

PROJECT = "kylon-fake-project"
REGION = "us-east5"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
VERTEX_VERSION = "vertex-2023-10-16"
LIFETIMES = {"default": 3600, "short": 2, "ahead": 120}
STATIC_TOKEN = "ya29.static-operator-token"


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def google_error(code, status, message):
    return {"error": {"code": code, "message": message, "status": status}}


class Token(RecordingHandler):
    """Google's OAuth2 token endpoint, for the JWT-bearer grant only."""

    def post(self):
        form = {k: v[0] for k, v in parse_qs(self.request.body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self.refuse("unsupported_grant_type")
        try:
            head, payload, signature = form["assertion"].split(".")
            claims = json.loads(b64url_decode(payload))
            account = self.fake.accounts_by_email[claims["iss"]]
            account["public_key"].verify(
                b64url_decode(signature), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except Exception:
            return self.refuse("invalid_grant")
        # google-auth addresses the assertion to Google's token URI, whatever token_uri says.
        if claims.get("aud") != GOOGLE_TOKEN_URI or SCOPE not in claims.get("scope", "").split():
            return self.refuse("invalid_scope")
        if claims.get("exp", 0) < time.time():
            return self.refuse("invalid_grant")
        self.finish(self.fake.issue(account))

    def refuse(self, error):
        self.set_status(400)
        self.finish({"error": error, "error_description": "refused by the fake token endpoint"})


class VertexAuth:
    def fail(self, status, body):
        self.set_status(status)
        self.finish(body)

    def authorized(self):
        scheme, _, token = (self.request.headers.get("Authorization") or "").partition(" ")
        if scheme != "Bearer" or not self.fake.token_valid(token):
            self.fail(401, google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."))
            return False
        return True

    def check_body(self, body, with_model):
        if body.get("anthropic_version") != VERTEX_VERSION:
            self.fail(400, google_error(400, "INVALID_ARGUMENT", "anthropic_version: vertex-2023-10-16 required"))
        elif ("model" in body) != with_model:
            self.fail(400, google_error(400, "INVALID_ARGUMENT", "model: Extra inputs are not permitted"))


class RawPredict(VertexAuth, MessagesHandler):
    def model_and_stream(self, body, project, region, model, method):
        self.check_body(body, with_model=False)
        stream = method == "streamRawPredict"
        if not self._finished and stream != (body.get("stream") is True):
            self.fail(400, google_error(400, "INVALID_ARGUMENT", "stream flag does not match the method"))
        return model, stream


class CountTokens(VertexAuth, CountTokensHandler):
    def authorized(self):
        if not VertexAuth.authorized(self):
            return False
        self.check_body(json.loads(self.request.body or b"{}"), with_model=True)
        return not self._finished


class FakeVertex(FakeServer):
    def __init__(self):
        self.lock = threading.Lock()
        self.issued = {}  # token -> (account name, expires at, time.time())
        self.grants = []  # account name per token handed out
        self.directory = tempfile.mkdtemp(prefix="kylon-vertex-fake-")
        models = r"/v1/projects/([^/]+)/locations/([^/]+)/publishers/anthropic/models"
        super().__init__(
            [
                (r"/token", Token),
                (models + r"/count-tokens:rawPredict", CountTokens),
                (models + r"/([^/:]+):(rawPredict|streamRawPredict)", RawPredict),
            ]
        )
        self.accounts = {name: self.make_account(name) for name in LIFETIMES}
        self.accounts_by_email = {a["email"]: a for a in self.accounts.values()}

    def make_account(self, name):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        email = f"{name}@{PROJECT}.iam.gserviceaccount.com"
        info = {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": os.urandom(20).hex(),
            "private_key": pem,
            "client_email": email,
            "client_id": "1000000000000000000" + str(len(name)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.url + "/token",
            "universe_domain": "googleapis.com",
        }
        path = os.path.join(self.directory, f"{name}.json")
        with open(path, "w") as f:
            json.dump(info, f)
        return {"name": name, "email": email, "file": path, "public_key": key.public_key(), "pem": pem}

    def issue(self, account):
        with self.lock:
            self.grants.append(account["name"])
            token = f"ya29.fake-{account['name']}-{len(self.grants)}"
            lifetime = LIFETIMES[account["name"]]
            self.issued[token] = (account["name"], time.time() + lifetime)
        return {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}

    def token_valid(self, token):
        if token == STATIC_TOKEN:
            return True
        with self.lock:
            entry = self.issued.get(token)
        return entry is not None and entry[1] > time.time()

    def grants_for(self, name):
        with self.lock:
            return self.grants.count(name)

    def stop(self):
        super().stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def credentials_file(self, name):
        return self.accounts[name]["file"]

    def kylon_env(self):
        return {
            "KYLON_VERTEX_PROJECT": PROJECT,
            "KYLON_VERTEX_REGION": REGION,
            "KYLON_VERTEX_BASE_URL": self.url,
            "GOOGLE_APPLICATION_CREDENTIALS": self.credentials_file("default"),
        }

    def secrets(self):
        # The private keys' base64 (a line of it is enough to spot a leak) and the static token.
        return {STATIC_TOKEN} | {a["pem"].splitlines()[1] for a in self.accounts.values()}


def start():
    return FakeVertex()
