"""Opens many idle TCP connections and holds them, as a flood or a
slowloris would; or trickles an HTTP request's headers over mutual TLS.

    idle_flood.py hold --count 1100 PORT [PORT ...]
        Connects COUNT times to each loopback PORT and sends nothing.
        Prints "held N" once every connect returned, then holds them until
        stdin closes.
    idle_flood.py slowloris --port P --ca CA --cert C --key K
        Completes a TLS handshake, sends the start of a request, then one
        header byte a second. Prints "dropped after S" (seconds since the
        first byte) when the server closes, or "never dropped" after 60 s.
"""

import argparse
import resource
import socket
import ssl
import sys
import time


def hold(args):
    # The flood needs more descriptors than a default soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(args.ports) * args.count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    held = []
    for port in args.ports:
        for _ in range(args.count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(s)
    print(f"held {len(held)}", flush=True)
    sys.stdin.read()
    for s in held:
        s.close()


def slowloris(args):
    context = ssl.create_default_context(cafile=args.ca)
    context.load_cert_chain(args.cert, args.key)
    raw = socket.create_connection(("127.0.0.1", args.port), timeout=5)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.settimeout(1)
    start = time.monotonic()
    tls.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    while time.monotonic() - start < 60:
        try:
            if tls.recv(1024) == b"":
                break
        except (socket.timeout, TimeoutError):
            pass
        except (ConnectionError, ssl.SSLError, OSError):
            break
        try:
            tls.sendall(b"a")
        except (ConnectionError, ssl.SSLError, OSError):
            break
    else:
        print("never dropped", flush=True)
        return
    print(f"dropped after {time.monotonic() - start:.1f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--count", type=int, required=True)
    h.add_argument("ports", type=int, nargs="+")
    s = sub.add_parser("slowloris")
    s.add_argument("--port", type=int, required=True)
    for name in ("ca", "cert", "key"):
        s.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    {"hold": hold, "slowloris": slowloris}[args.mode](args)


if __name__ == "__main__":
    main()
