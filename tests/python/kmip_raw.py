"""Sends malformed KMIP over mutual TLS and prints, as JSON, what the door
did with each: the Result Reason of its answer, and whether the connection
stayed open (a valid Discover Versions sent after it is answered) or was
closed. For tests/tests/kmip_door.rs.

    kmip_raw.py PORT CERT KEY CA
"""
import json
import socket
import ssl
import struct
import sys

port, cert, key, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
context = ssl.create_default_context(cafile=ca)
context.check_hostname = False
context.load_cert_chain(cert, key)

# Discover Versions in KMIP 1.4 with an empty payload, as TTLV.
def item(tag, typ, value):
    return bytes.fromhex(tag) + bytes([typ]) + struct.pack(">I", len(value)) + value + b"\0" * (-len(value) % 8)

def integer(tag, n):
    return item(tag, 0x02, struct.pack(">i", n))

def enum(tag, n):
    return item(tag, 0x05, struct.pack(">I", n))

def structure(tag, *items):
    return item(tag, 0x01, b"".join(items))

DISCOVER = structure(
    "420078",
    structure("420077", structure("420069", integer("42006A", 1), integer("42006B", 4)), integer("42000D", 1)),
    structure("42000F", enum("42005C", 0x1E), structure("420079")),
)

CASES = {
    # A structure header whose content is not TTLV.
    "garbage_body": bytes.fromhex("42007801") + struct.pack(">I", 16) + b"\xff" * 16,
    # A Request Message of the wrong shape: a Response Message tag.
    "wrong_tag": structure("42007B", structure("42007A")),
    # A length beyond any message the door accepts.
    "oversized": bytes.fromhex("42007801") + struct.pack(">I", 0x7FFFFFF0),
    # Nested structures deeper than the codec allows.
    "too_deep": (lambda: [b := structure("420079")] and [b := structure("420079", b) for _ in range(40)][-1])(),
}


def read_message(tls):
    head = b""
    while len(head) < 8:
        chunk = tls.recv(8 - len(head))
        if not chunk:
            return None
        head += chunk
    length = struct.unpack(">I", head[4:8])[0]
    body = b""
    while len(body) < length:
        chunk = tls.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return head + body


def reason_of(message):
    """The first Result Reason's value, or None."""
    at = message.find(bytes.fromhex("42007E0500000004"))
    return None if at < 0 else struct.unpack(">I", message[at + 8:at + 12])[0]


out = {}
for name, payload in CASES.items():
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(payload)
            try:
                answer = read_message(tls)
            except (ssl.SSLError, ConnectionError, socket.timeout) as e:
                answer = None
            result = {"reason": reason_of(answer) if answer else None}
            try:
                tls.sendall(DISCOVER)
                after = read_message(tls)
                result["open_after"] = after is not None and reason_of(after) is None
            except (ssl.SSLError, ConnectionError, socket.timeout, OSError):
                result["open_after"] = False
            out[name] = result
print(json.dumps(out))
