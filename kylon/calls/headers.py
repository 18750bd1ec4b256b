"""The headers of a proxied call: what goes upstream, what comes back."""

from .. import relay
from ..auth import KEY_PREFIX

# Client headers that never go upstream, whatever the provider (besides every
# header a provider takes a Kylon key from): cookies, compression (Kylon reads
# the answer to bill it, so it asks for it plain), the client's addresses.
NEVER_FORWARD = frozenset(
    "cookie accept-encoding forwarded x-forwarded-for x-forwarded-host x-forwarded-proto x-real-ip".split()
)
# Set by Kylon's own HTTP server on every answer.
OWN_RESPONSE_HEADERS = ("date", "server")


def upstream_header_pairs(client_headers, provider, key_headers):
    """The (name, value) pairs sent upstream: the client's end-to-end headers
    (already checked by the HTTP server) less what never goes upstream (any
    header that can carry a Kylon key: `key_headers`), then the provider's
    defaults and its credential."""
    drop = NEVER_FORWARD.union(key_headers, provider.drop_request_headers)
    credential = provider.auth_headers()
    replaced = {name.lower() for name in credential}
    pairs = [
        (name, value)
        for name, value in relay.end_to_end_headers(client_headers, drop)
        # A Kylon key in any other header stays here too.
        if KEY_PREFIX not in value and name.lower() not in replaced
    ]
    if provider.default_request_headers:
        present = {name.lower() for name, _ in pairs}
        for name, value in provider.default_request_headers.items():
            if name.lower() not in present:
                pairs.append((name, value))
    pairs.extend(credential.items())
    return pairs


def copy_response_headers(out, upstream_headers, drop):
    """The upstream's end-to-end headers into `out` (the answer's HTTPHeaders)."""
    seen = set()
    for name, value in relay.end_to_end_headers(upstream_headers, drop):
        if name.lower() in OWN_RESPONSE_HEADERS:
            continue
        # Names and values were checked as the upstream's headers were parsed
        # (HTTPHeaders.add): set_header() would check them again.
        if name in seen:
            out.add(name, value)
        else:
            out[name] = value
            seen.add(name)


def upstream_request_id(provider, headers):
    """The provider's own id of the request, from its answer's headers."""
    if headers is None:
        return ""
    for name in provider.upstream_id_headers:
        if name in headers:
            return headers[name][:100]
    return ""
