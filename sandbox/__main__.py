"""`python -m smscast.sandbox [--port N] [knob options]`: serve the provider emulator on loopback
(see sandbox/server.py).

Every knob (sandbox/faults.py) is an option, e.g. `--latency-ms 20 --rate-limit-rps 5 --next-5xx 1
--reject-suffixes 000,13`, or for delivery truth `--undelivered-share 0.05 --dlr-delay-ms 2000 --dlr-url
http://127.0.0.1:9000/dlr --dlr-duplicate-share 0.01 --async-reject-share 0.02`; `--api-key generic=secret`
overrides one provider's key; `--config-json` takes the whole configuration at once (used by
`servers.sandbox.SandboxServer`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import orjson

from smscast.sandbox.emulators import EMULATORS
from smscast.sandbox.faults import KNOB_NAMES, KnobError, Knobs, parse_knobs
from smscast.sandbox.framework import DEFAULT_API_KEY
from smscast.sandbox.server import DEFAULT_PORT, serve


def _knob_type(name: str) -> type:
    default = getattr(Knobs(), name)
    if isinstance(default, float):
        return float
    if isinstance(default, int):
        return int
    return str  # suffix lists (comma-separated) and the seed, checked by parse_knobs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m smscast.sandbox", description="smscast's SMS provider emulator"
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback; default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"0 picks a free port (default {DEFAULT_PORT})"
    )
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    p.add_argument("--api-key", action="append", default=[], metavar="PROVIDER=KEY", help="override a key")
    p.add_argument("--default-key", default=DEFAULT_API_KEY, help="key every other provider accepts")
    p.add_argument(
        "--emulator", action="append", metavar="NAME", help=f"mount only these ({', '.join(EMULATORS)})"
    )
    p.add_argument("--log-level", default="warning")
    p.add_argument("--config-json", help="JSON: knobs, provider_knobs, api_keys, default_key, emulators")
    p.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    knobs = p.add_argument_group("fault and delivery knobs (see sandbox/faults.py)")
    for name in KNOB_NAMES:
        knobs.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"knob_{name}",
            type=_knob_type(name),
            default=None,
            metavar="VALUE",
        )
    knobs.add_argument(
        "--next-drop", dest="knob_next_drop_after", type=int, help="alias of --next-drop-after"
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    config: dict[str, Any] = orjson.loads(args.config_json) if args.config_json else {}
    knobs: dict[str, Any] = dict(config.get("knobs") or {})
    for name in KNOB_NAMES:
        value = getattr(args, f"knob_{name}")
        if value is not None:
            knobs[name] = value
    api_keys: dict[str, str] = dict(config.get("api_keys") or {})
    for item in args.api_key:
        provider, sep, key = item.partition("=")
        if not sep or not provider or not key:
            parser.error(f"--api-key expects PROVIDER=KEY, got {item!r}")
        api_keys[provider] = key
    try:
        parse_knobs(knobs)
    except KnobError as exc:
        parser.error(str(exc))
    serve(
        host=args.host,
        port=args.port,
        api_keys=api_keys,
        default_key=config.get("default_key") or args.default_key,
        emulators=args.emulator or config.get("emulators"),
        provider_knobs=config.get("provider_knobs") or {},
        port_file=args.port_file,
        log_level=args.log_level,
        exit_with_parent=args.exit_with_parent,
        **knobs,
    )


if __name__ == "__main__":
    main()
