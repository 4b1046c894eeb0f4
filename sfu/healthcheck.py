"""`python -m sfu.healthcheck`: exit 0 when the server on this machine answers `/healthz`.

For container health checks: the port and whether TLS is on come from the config file
(`--config FILE`, else $KEYROOM_CONFIG), so the same command works with TLS on or off. The
request goes to the loopback address (or `server.host` when it is a specific address) and, as
it only asks whether the process is alive and carries nothing secret, does not verify the
certificate: its name is the public host's, not 127.0.0.1's.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.error
import urllib.request

from sfu.config import ConfigError, parse_config_file

WILDCARDS = ("0.0.0.0", "::", "localhost")


def health_url(config_path: str | None) -> tuple[str, ssl.SSLContext | None]:
    server = parse_config_file(config_path).server
    host = "127.0.0.1" if server.host in WILDCARDS else server.host
    if ":" in host:
        host = f"[{host}]"
    if server.tls_cert is None:
        return f"http://{host}:{server.port}/healthz", None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return f"https://{host}:{server.port}/healthz", context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfu.healthcheck", description=__doc__)
    parser.add_argument("--config", help="the server's TOML config (default: $KEYROOM_CONFIG)")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    try:
        url, context = health_url(args.config or os.environ.get("KEYROOM_CONFIG"))
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as response:
            status = response.status
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
