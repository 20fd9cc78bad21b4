"""``taskwarden serve``: the REST API, the live streams and the dashboard on one port.

With ``--app PKG.MODULE:ATTR`` (or ``--demo``, the bundled demo application) the server
also hosts an embedded worker of the fleet for that application, in the same event loop:
its engine runs the commands and the cron schedules, and its changes reach the streams at
once. Without it, the server is a pure client of the store (and the bus): it reads and
streams, and sends launch / cancel / dismiss through the store to the fleet's workers.

This module parses and checks the options with the standard library only; the service
itself (:mod:`taskwarden.cli.serving`) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from taskwarden.cli.common import (
    DEFAULT_STORE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CommandError,
    check_store_exists,
    store_url,
)

if TYPE_CHECKING:
    from taskwarden.application import Application

__all__ = ["parse_tokens", "register", "root_path"]

ROLES = ("viewer", "operator")
TOKEN_ENV = {"TASKWARDEN_TOKEN": "operator", "TASKWARDEN_VIEWER_TOKEN": "viewer"}
"""Environment variables that add a token of a role to the ``--token`` options."""


def register(commands: Any) -> None:
    """Add the ``serve`` command to the CLI's subparsers."""
    parser = commands.add_parser(
        "serve",
        help="serve the REST API, the live streams and the dashboard",
        description=(
            "Serve the REST API, its live SSE streams, /healthz, /readyz, /metrics and the "
            "dashboard. With --app (or --demo) the server also runs that application's "
            "processes and cron schedules; without, it is a client of the store and the "
            "bus. Ctrl-C or SIGTERM closes the streams and stops within seconds."
        ),
    )
    parser.add_argument(
        "--app",
        metavar="PKG.MODULE:ATTR",
        default=None,
        help="a taskwarden.Application to host an engine for (default: none)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="host the bundled demo application and launch a few of its processes",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help=f"store URL (default: $TASKWARDEN_STORE, else {DEFAULT_STORE})",
    )
    parser.add_argument(
        "--bus", metavar="URL", default=None, help="bus URL (default: $TASKWARDEN_BUS)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=_port, default=8000, help="port to listen on (default 8000; 0: any free one)"
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN:ROLE",
        help="accept this bearer token with the role viewer or operator (repeatable; "
        "$TASKWARDEN_TOKEN and $TASKWARDEN_VIEWER_TOKEN add one each)",
    )
    parser.add_argument(
        "--allow-open",
        action="store_true",
        help="serve without any token on an address other than loopback (anyone who "
        "reaches it may launch and cancel)",
    )
    parser.add_argument(
        "--root-path",
        default="",
        metavar="PATH",
        help="the path prefix a reverse proxy serves this under and strips (e.g. /taskwarden); "
        "the session cookie is scoped to it (default: none)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        default=None,
        metavar="IPS",
        help="proxies whose X-Forwarded-Proto / X-Forwarded-For are believed: comma-separated "
        "addresses or networks, or '*' (default: $FORWARDED_ALLOW_IPS, else 127.0.0.1,::1)",
    )
    parser.add_argument(
        "--no-proxy-headers",
        dest="proxy_headers",
        action="store_false",
        help="ignore X-Forwarded-* headers even from the allowed proxies",
    )
    parser.add_argument(
        "--session-max-age",
        type=_seconds,
        default=12 * 3600.0,
        metavar="SECONDS",
        help="how long a dashboard sign-in lasts (default 43200, 12 h)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on shutdown, how long running runs may finish before they are cancelled "
        "(default 0: cancel at once)",
    )
    parser.set_defaults(handler=_run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def root_path(text: str) -> str:
    """``--root-path`` checked and normalised: ``""`` or ``/a/b`` (no trailing slash).

    Raises:
        CommandError: it does not start with ``/`` or holds a ``?`` or ``#`` (exit code 2).
    """
    value = text.strip().rstrip("/")
    if not value:
        return ""
    if not value.startswith("/") or any(c in value for c in "?#% "):
        raise CommandError(
            EXIT_USAGE,
            f"--root-path {text!r} is not a path prefix: give one like /taskwarden "
            "(the path the proxy serves this under)",
        )
    return value


def parse_tokens(options: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Tokens and their roles from ``TOKEN:ROLE`` options and the environment.

    Raises:
        CommandError: an option without a role, or with an unknown one (exit code 2).
    """
    env = os.environ if environ is None else environ
    tokens = {env[name]: role for name, role in TOKEN_ENV.items() if env.get(name)}
    for option in options:
        token, sep, role = option.rpartition(":")
        if not sep or not token:
            raise CommandError(
                EXIT_USAGE, f"--token {option!r} is not TOKEN:ROLE (e.g. s3cret:operator)"
            )
        if role not in ROLES:
            raise CommandError(
                EXIT_USAGE, f"--token ...:{role}: the role is 'viewer' or 'operator'"
            )
        tokens[token] = role
    return tokens


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port``, bound now so a busy port is reported
    before anything else starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CommandError(EXIT_USAGE, f"--host {host!r} does not resolve: {exc}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise CommandError(
            EXIT_USAGE,
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another server on "
            "that port? Pick another with --port (or --port 0 for any free one)",
        ) from None
    sock.set_inheritable(True)
    return sock


def _application(args: argparse.Namespace) -> Application | None:
    if args.demo and args.app:
        raise CommandError(EXIT_USAGE, "--demo and --app are exclusive: pass one of them")
    if args.demo:
        from taskwarden.cli.demo_app import demo_application

        return demo_application
    if args.app is None:
        return None
    from taskwarden.application import load_application
    from taskwarden.errors import ConfigurationError

    try:
        return load_application(args.app)
    except ConfigurationError as exc:
        raise CommandError(EXIT_USAGE, str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from taskwarden.errors import ConfigurationError, MissingExtra

    try:
        tokens = parse_tokens(args.token)
        if not tokens and not args.allow_open and not _is_loopback(args.host):
            raise CommandError(
                EXIT_USAGE,
                f"refusing to serve the control endpoints on {args.host} without a token: "
                "pass --token TOKEN:operator (or set TASKWARDEN_TOKEN), or --allow-open "
                "if the network in front of it is trusted",
            )
        try:
            from taskwarden.cli.serving import ServeSettings, serve
        except MissingExtra as exc:
            raise CommandError(EXIT_UNAVAILABLE, str(exc)) from None
        except ImportError as exc:
            raise CommandError(
                EXIT_UNAVAILABLE,
                f"taskwarden serve needs an optional dependency ({exc.name or exc}): "
                "pip install 'taskwarden[server]'",
            ) from None
        application = _application(args)
        url = store_url(args)
        if application is None:
            check_store_exists(url)  # a pure client must not create an empty store
        settings = ServeSettings(
            store=url,
            bus=args.bus or os.environ.get("TASKWARDEN_BUS") or None,
            application=application,
            demo=args.demo,
            tokens=tokens,
            drain=max(0.0, args.drain),
            root_path=root_path(args.root_path),
            proxy_headers=args.proxy_headers,
            forwarded_allow_ips=args.forwarded_allow_ips,
            session_max_age=args.session_max_age,
        )
        sock = _bind(args.host, args.port)
        return serve(settings, sock, host=args.host)
    except CommandError as exc:
        print(f"taskwarden serve: {exc.message}", file=sys.stderr)
        return exc.code
    except ConfigurationError as exc:
        code = EXIT_UNAVAILABLE if isinstance(exc, ImportError) else EXIT_USAGE
        print(f"taskwarden serve: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130
