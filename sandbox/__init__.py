"""smscast's SMS provider sandbox: a real HTTP server on loopback that emulates providers' batch APIs, with
fault knobs, a ledger of every accepted message, and the delivery truth of each.

    sandbox.ledger       the ledger, idempotency index and delivery outcomes (counters: sandbox.counters)
    sandbox.faults       fault and delivery knobs, token-bucket rate limiter
    sandbox.truth        delivery truth: each accepted message's outcome, decided by a hash at acceptance
    sandbox.callbacks    delivery reports POSTed to the `dlr_url` knob, in the background, with retries
    sandbox.framework    config and state, the request pipeline, `Emulator` base class (auth: sandbox.auth,
                         request-level idempotency: sandbox.idempotency)
    sandbox.clock        the one time source, which tests freeze and advance
    sandbox.emulators    one module per provider, and the registry
    sandbox.app          create_app(): emulators + /_sandbox/ admin endpoints
    sandbox.server       serve(), what `python -m smscast.sandbox` runs (in a subprocess: servers.sandbox)
    sandbox.client       SandboxClient for the admin endpoints
"""
