"""Credentials of a recipients source: never recorded, resolved where the run executes.

A source URI is a campaign parameter, and Prefect keeps parameters as given (the UI's Parameters tab, the API),
as does the campaign's recorded spec beside its results. So a password must never travel inside it:

* `smscast send postgresql://user:pw@host/db` is convenient and common, so the command line takes the password
  out of the URI before anything is recorded and hands it to this process as `PGPASSWORD`, which libpq reads;
* everywhere else (the Prefect UI's form, deployments, the Python API) a source URI carrying a password is
  refused: the password belongs in `PGPASSWORD` on the worker, in `~/.pgpass`, or in the Prefect Secret block
  `smscast-postgres-password`, which `postgres_password()` reads where the run executes;
* S3 takes its credentials from the standard AWS variables only, never from the URI.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from smscast.errors import ConfigError
from smscast.sources import SCHEME

POSTGRES_SECRET_BLOCK = "smscast-postgres-password"
_PASSWORD_PARAMS = ("password", "sslpassword")  # libpq takes these as query parameters too


def _is_postgres(uri: str) -> bool:
    match = SCHEME.match(uri)
    return match is not None and match.group(1).lower().split("+")[0] in ("postgresql", "postgres")


def split_password(uri: str) -> tuple[str, str | None]:
    """`uri` without its password (the user name stays) and the password, or (uri, None) if it has none."""
    if not SCHEME.match(uri):
        return uri, None
    try:
        parts = urlsplit(uri)
        password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return uri, None
    in_query = [v for k, v in query if k.lower() in _PASSWORD_PARAMS]
    if password is None and not in_query:
        return uri, None
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    kept = urlencode([(k, v) for k, v in query if k.lower() not in _PASSWORD_PARAMS])
    clean = urlunsplit((parts.scheme, netloc, parts.path, kept, parts.fragment))
    return clean, password if password is not None else in_query[0]


def refuse_recorded_password(uri: str) -> None:
    """Raise ConfigError, never quoting the URI, if the source carries a password (see the module's doc)."""
    if split_password(uri)[1] is None:
        return
    if _is_postgres(uri):
        raise ConfigError(
            "the recipients source carries a password, which would be recorded with the campaign (Prefect's "
            "flow-run parameters, the campaign's spec): remove it from the URI and set PGPASSWORD where the "
            f"run executes, use ~/.pgpass, or create the Prefect Secret block '{POSTGRES_SECRET_BLOCK}'"
        )
    raise ConfigError(
        "the recipients source carries a password in its URI, which would be recorded with the campaign: "
        "remove it (S3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment)"
    )


def take_password_for_this_process(uri: str) -> str:
    """For the command line, which runs the flow in its own process: move a PostgreSQL password from `uri`
    into this process's PGPASSWORD and return the URI without it. Other sources with a password are refused."""
    clean, password = split_password(uri)
    if password is None:
        return uri
    if not _is_postgres(uri):
        refuse_recorded_password(uri)
    os.environ["PGPASSWORD"] = password
    return clean


def postgres_password(dsn: str) -> str | None:
    """The password to connect with when the DSN has none and libpq has no PGPASSWORD: the Prefect Secret
    block, where a deployment keeps it. None lets libpq try ~/.pgpass and password-less authentication."""
    if split_password(dsn)[1] is not None or os.environ.get("PGPASSWORD"):
        return None
    from smscast.settings import secret_block

    return secret_block(POSTGRES_SECRET_BLOCK)
