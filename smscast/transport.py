"""Where httpx meets our exception tree: which transport failures mean "never sent" and which mean
"may have been accepted". For SMS the difference decides between re-sending and reconciling."""

from __future__ import annotations

import functools
import os
import ssl

import httpx

from smscast.errors import AmbiguousError, NotSentError


async def send(client: httpx.AsyncClient, request: httpx.Request, provider: str) -> httpx.Response:
    try:
        return await client.send(request)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        # No connection was made (or none was free): the provider never saw the request.
        raise NotSentError(
            f"{provider}: could not connect ({type(exc).__name__})", code="connect_error"
        ) from None
    except (httpx.WriteError, httpx.WriteTimeout) as exc:
        # The request body was not fully written; a server cannot act on a truncated request.
        raise NotSentError(
            f"{provider}: request not fully sent ({type(exc).__name__})", code="write_error"
        ) from None
    except httpx.ReadTimeout:
        raise AmbiguousError(f"{provider}: no response within the timeout", code="read_timeout") from None
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        # The connection dropped after the request went out: it may have been processed.
        raise AmbiguousError(
            f"{provider}: connection lost awaiting the response ({type(exc).__name__})",
            code="connection_lost",
        ) from None
    # Exception texts from httpx can echo the URL; ours name only the provider, and `from None` keeps the
    # original (with its request attached) out of tracebacks that might be logged.


def tls_context() -> ssl.SSLContext:
    """The TLS settings every provider client of this process shares: what httpx builds for `verify=True`
    (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR), built once. httpx builds one per client otherwise, about
    30 ms of CPU each (loading the CA bundle), and a campaign makes a client per shard, even for plain http."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    del cert_file, cert_dir  # the cache key: a changed setting gets a context of its own
    return httpx.create_ssl_context()
