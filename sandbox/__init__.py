"""smscast's SMS provider sandbox: a real HTTP server on loopback that emulates providers' batch APIs, with
fault knobs and a ledger of every accepted message.

    sandbox.ledger       the ledger, idempotency index and counters
    sandbox.faults       fault knobs, token-bucket rate limiter
    sandbox.framework    config and state, auth helpers, the request pipeline, `Emulator` base class
    sandbox.emulators    one module per provider, and the registry
    sandbox.app          create_app(): emulators + /_sandbox/ admin endpoints
    sandbox.server       serve(), what `python -m smscast.sandbox` runs (in a subprocess: servers.sandbox)
    sandbox.client       SandboxClient for the admin endpoints
"""
