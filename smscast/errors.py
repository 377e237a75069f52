"""The exception tree.

Two splits matter and retry logic depends on them alone:

* terminal vs transient (as in dlt): a TerminalError will fail the same way again; a TransientError may not.
* never sent vs maybe accepted (as in httpx's ConnectError vs ReadTimeout): for SMS that decides between
  re-sending (harmless) and reconciling (a blind re-send could text someone twice).

Messages never carry secrets: providers build them from codes and our own words, never from request headers.
"""

from __future__ import annotations


class SmscastError(Exception):
    """Base of every error smscast raises on purpose."""


class ConfigError(SmscastError):
    """Bad options or settings: unknown provider, missing credential, conflicting flags."""


class SourceError(SmscastError):
    """The recipients source cannot be read: missing file, bad URI, missing columns, unreadable content."""


class SendError(SmscastError):
    """A batch could not be sent as a whole. Subclasses say whether it may be retried and whether it may
    have been accepted."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class TransientError(SendError):
    """Worth trying again later."""


class TerminalError(SendError):
    """Will fail the same way again: do not retry."""


class NotSentError(TransientError):
    """The request never reached the provider (connect error, connect timeout, pool timeout)."""


class RateLimitedError(TransientError):
    """HTTP 429. The provider did not accept the batch; wait `retry_after` seconds."""

    def __init__(self, message: str, *, code: str = "rate_limited", retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServerError(TransientError):
    """HTTP 5xx: the provider says it failed; the batch was not accepted."""


class AmbiguousError(TransientError):
    """The request may have been accepted (read timeout, connection dropped after the body was sent,
    a gateway timeout). Re-send only where the provider's idempotency makes it harmless."""


class BatchRejectedError(TerminalError):
    """The provider refused the whole batch (4xx, or a whole-file validation failure). `retryable_split`
    says whether a smaller request can avoid the cause (a bad row, a request too large or mixed); `rows` are the
    positions in the batch of the rows the refusal names, where the provider names them. How the engine
    isolates the cause follows the provider's `Capabilities.rejection` (tasks/send_batch.py)."""

    def __init__(
        self, message: str, *, code: str, retryable_split: bool = False, rows: tuple[int, ...] = ()
    ) -> None:
        super().__init__(message, code=code)
        self.retryable_split = retryable_split
        self.rows = rows


class CampaignStopError(TerminalError):
    """Refused for a reason that every further batch would meet too (credentials, the account's quota or
    credit, a sender the account does not own): stop the campaign, record the unsent rows as `failed`."""


class AuthError(CampaignStopError):
    """401/403: credentials are wrong."""
