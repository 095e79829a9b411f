"""Connects to a TLS listener that requires client certificates without
presenting one, sends one KMIP-sized request, and prints what happened:
"refused: ..." when the handshake or the first read failed, "answered" when
the server answered anyway. For tests/tests/kmip_door.rs.

    tls_without_cert.py PORT CA
"""
import socket
import ssl
import sys

port, ca = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=ca)
context.check_hostname = False
try:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            # A Request Message header claiming no content.
            tls.sendall(bytes.fromhex("42007801" "00000000"))
            data = tls.recv(8)
            print("answered" if data else "refused: closed without an answer")
except (ssl.SSLError, ConnectionError, OSError) as e:
    print(f"refused: {type(e).__name__}: {e}")
