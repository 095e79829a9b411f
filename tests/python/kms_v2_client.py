"""Drives sealbroker's Kubernetes KMS v2 socket the way kube-apiserver does,
with stubs generated at run time from proto/k8s/kms/v2/api.proto.

usage: kms_v2_client.py KMS_SOCKET SEALBROKER_BIN ADMIN_SOCKET KEY_NAME [MODE]
MODE "full" (default) runs kube-apiserver's pattern; "wrap-only" expects this
caller to be granted wrap but not unwrap on the key.
Exits non-zero on the first failed expectation.
"""
import re
import subprocess
import sys

import grpc

from common import check, compile_protos, print_passed

kms_socket, sealbroker, admin_socket, key_name = sys.argv[1:5]
mode = sys.argv[5] if len(sys.argv) > 5 else "full"
compile_protos("k8s/kms/v2/api.proto")
from k8s.kms.v2 import api_pb2 as pb, api_pb2_grpc as rpc  # noqa: E402

# kube-apiserver (Go gRPC) sends ":authority: localhost" on unix sockets: this
# channel speaks as it does. A stock C-core channel (default options) sends the
# percent-encoded socket path instead; it is checked at the end.
channel = grpc.insecure_channel(f"unix://{kms_socket}", options=[("grpc.default_authority", "localhost")])
stub = rpc.KeyManagementServiceStub(channel)

if mode == "wrap-only":
    seed = bytes(range(32))
    enc = stub.Encrypt(pb.EncryptRequest(plaintext=seed, uid="acl-1"))
    check(len(enc.ciphertext) > 0, "a caller granted wrap can Encrypt")
    try:
        stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="acl-2", key_id=enc.key_id,
                                         annotations=enc.annotations))
        check(False, "a caller without unwrap cannot Decrypt")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"Decrypt -> PERMISSION_DENIED, got {e.code()}")
        check("unwrap" in e.details() and key_name in e.details(),
              f"the refusal names the operation and key, got {e.details()!r}")
    # The ACL runs before the key ring is consulted: a key id the broker never
    # issued is refused as forbidden, not as unknown, so it reveals nothing.
    try:
        stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="acl-3", key_id="not-a-key-id"))
        check(False, "a caller without unwrap cannot probe key ids")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.PERMISSION_DENIED,
              f"Decrypt with an unknown key id -> PERMISSION_DENIED, got {e.code()}")
    print_passed()
    sys.exit(0)

# kube-apiserver polls Status first.
status = stub.Status(pb.StatusRequest())
check(status.version == "v2", f"version is v2, got {status.version!r}")
check(status.healthz == "ok", f"healthz is ok, got {status.healthz!r}")
check(0 < len(status.key_id) <= 1024, "key_id is set and at most 1 KiB")
first_id = status.key_id

# Encrypt a 32-byte DEK seed, as the KDF mode does.
seed = bytes(range(32))
enc = stub.Encrypt(pb.EncryptRequest(plaintext=seed, uid="uid-1"))
check(enc.key_id == first_id, "Encrypt returns the Status key_id")
check(0 < len(enc.ciphertext) <= 1024, f"ciphertext within 1 KiB ({len(enc.ciphertext)} bytes)")
check(seed not in enc.ciphertext, "ciphertext does not contain the plaintext")
for name in enc.annotations:
    check(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) and "." in name, f"annotation {name!r} is a domain name")
dec = stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="uid-2", key_id=enc.key_id,
                                     annotations=enc.annotations))
check(dec.plaintext == seed, "Decrypt returns the seed")

# Rotate the key through the broker's admin API.
subprocess.run([sealbroker, "keys", "--socket", admin_socket, "rotate", key_name], check=True,
               stdout=subprocess.DEVNULL)
status = stub.Status(pb.StatusRequest())
check(status.key_id != first_id, "Status shows a new key_id after rotation")
check(status.healthz == "ok", "still healthy after rotation")
enc2 = stub.Encrypt(pb.EncryptRequest(plaintext=seed, uid="uid-3"))
check(enc2.key_id == status.key_id, "Encrypt uses the new key_id")

# Data under the old key id still decrypts.
dec = stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="uid-4", key_id=first_id,
                                     annotations=enc.annotations))
check(dec.plaintext == seed, "old ciphertext still decrypts after rotation")

# Key ids the broker did not issue are rejected.
try:
    stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="uid-5", key_id="not-a-key-id"))
    check(False, "unknown key_id is rejected")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"unknown key_id -> INVALID_ARGUMENT, got {e.code()}")
    check("not issued by this broker" in e.details(), f"clear message, got {e.details()!r}")

# Garbage ciphertext is a clear error, not a crash.
try:
    stub.Decrypt(pb.DecryptRequest(ciphertext=b"garbage", uid="uid-6", key_id=first_id))
    check(False, "garbage ciphertext is rejected")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"garbage -> INVALID_ARGUMENT, got {e.code()}")

# A stock C-core client with default options, on the same socket.
plain = rpc.KeyManagementServiceStub(grpc.insecure_channel(f"unix:{kms_socket}"))
status = plain.Status(pb.StatusRequest())
check(status.healthz == "ok", f"default-options client: healthz is ok, got {status.healthz!r}")
enc = plain.Encrypt(pb.EncryptRequest(plaintext=seed, uid="uid-7"))
dec = plain.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="uid-8", key_id=enc.key_id,
                                      annotations=enc.annotations))
check(dec.plaintext == seed, "default-options client: Encrypt then Decrypt round-trips")

print_passed()
