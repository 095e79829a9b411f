"""A stock Python gRPC client (grpcio, gRPC C-core) calling sealbroker's
native door with its default channel options, stubs generated at run time
from proto/sealbroker/v1/seal.proto, health through grpcio-health-checking.

usage: grpc_client.py KEY TARGET [CA_FILE CERT_FILE KEY_FILE]
       grpc_client.py --authority AUTHORITY TARGET

TARGET is a gRPC target: `unix:/abs/path`, `unix:///abs/path`, or
`127.0.0.1:PORT` (then the three PEM files give mutual TLS).

The first form round-trips Wrap/Unwrap, checks a wrong-AAD refusal and the
standard grpc.health.v1 check, then makes many calls on the one connection
with changing metadata, so that C-core's HPACK table indexes, reuses and
evicts entries, and some concurrently. The second form overrides the
channel's authority and expects the call to be refused as INVALID_ARGUMENT.
Exits non-zero on the first failed expectation.
"""
import os
import sys
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import check, compile_protos, print_passed

compile_protos("sealbroker/v1/seal.proto")
from sealbroker.v1 import seal_pb2 as pb, seal_pb2_grpc as rpc  # noqa: E402


def code_of(call):
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return None, None


if sys.argv[1] == "--authority":
    authority, target = sys.argv[2:4]
    channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
    code, details = code_of(lambda: rpc.SealServiceStub(channel).ListKeys(pb.ListKeysRequest(), timeout=10))
    check(code == grpc.StatusCode.INVALID_ARGUMENT, f"authority {authority!r} -> INVALID_ARGUMENT, got {code}")
    check(":authority" in (details or ""), f"the refusal names the :authority, got {details!r}")
    print_passed()
    sys.exit(0)

key, target = sys.argv[1:3]
if len(sys.argv) > 3:
    ca, cert, private = (Path(p).read_bytes() for p in sys.argv[3:6])
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=private, certificate_chain=cert)
    channel = grpc.secure_channel(target, creds)
else:
    channel = grpc.insecure_channel(target)
stub = rpc.SealServiceStub(channel)
health = health_pb2_grpc.HealthStub(channel)

for service in ("", "sealbroker.v1.SealService"):
    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    check(reply.status == health_pb2.HealthCheckResponse.SERVING, f"health of {service!r} is SERVING, got {reply.status}")
code, _ = code_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10))
check(code == grpc.StatusCode.NOT_FOUND, f"health of an unknown service -> NOT_FOUND, got {code}")

names = [k.name for k in stub.ListKeys(pb.ListKeysRequest(), timeout=10).keys]
check(key in names, f"ListKeys lists {key!r}, got {names}")

secret = os.urandom(32)
wrapped = stub.Wrap(pb.WrapRequest(key_name=key, plaintext=secret, aad=b"cluster-a"), timeout=10)
check(wrapped.key_name == key and wrapped.key_version >= 1, "Wrap names the key and its version")
check(secret not in wrapped.blob, "the blob does not contain the plaintext")
opened = stub.Unwrap(pb.UnwrapRequest(blob=wrapped.blob, aad=b"cluster-a"), timeout=10)
check(opened.plaintext == secret, "Unwrap returns the wrapped secret")
code, details = code_of(lambda: stub.Unwrap(pb.UnwrapRequest(blob=wrapped.blob, aad=b"cluster-b"), timeout=10))
check(code == grpc.StatusCode.FAILED_PRECONDITION, f"wrong AAD -> FAILED_PRECONDITION, got {code} {details!r}")
# Hardened ACLs are per key: a key this caller has no grant on is refused as
# forbidden, whether or not it exists, so the refusal reveals nothing.
code, details = code_of(lambda: stub.Wrap(pb.WrapRequest(key_name="no-such-key", plaintext=b"x"), timeout=10))
check(code == grpc.StatusCode.PERMISSION_DENIED and "no-such-key" in details,
      f"a key without a grant -> PERMISSION_DENIED naming it, got {code} {details!r}")

# Many requests on one connection, each with new metadata: C-core indexes
# every new value, later requests refer to the table, and 200 x ~90 bytes
# overflow its 4 KiB, so entries are evicted while the connection lives.
for i in range(200):
    metadata = (("x-request-id", f"req-{i:04d}-" + "r" * (i % 37)), ("x-tenant", f"tenant-{i % 7}"))
    aad = f"aad-{i % 5}".encode()
    blob = stub.Wrap(pb.WrapRequest(key_name=key, plaintext=secret, aad=aad), metadata=metadata, timeout=10).blob
    back = stub.Unwrap(pb.UnwrapRequest(blob=blob, aad=aad), metadata=metadata, timeout=10).plaintext
    if back != secret:
        check(False, f"round trip {i} on the shared connection")
check(True, "200 round trips with changing metadata on one connection")


def round_trip(i):
    plain = os.urandom(16 + i)
    blob = stub.Wrap(pb.WrapRequest(key_name=key, plaintext=plain), timeout=10).blob
    return stub.Unwrap(pb.UnwrapRequest(blob=blob), timeout=10).plaintext == plain


with futures.ThreadPoolExecutor(16) as pool:
    results = list(pool.map(round_trip, range(64)))
check(all(results), f"64 concurrent round trips, {results.count(False)} failed")
print_passed()
