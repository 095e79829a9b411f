#!/usr/bin/env python3
"""Writes one frame body of each helper message into seeds/wire_decode/."""
import os
import struct

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wire_decode")
os.makedirs(here, exist_ok=True)


def b(data):
    return struct.pack(">I", len(data)) + data


def head(tag, rid):
    return bytes([tag]) + struct.pack(">Q", rid)


key = b"\x01" + b(b"unseal") + b"\x01" + b(b"\x01\x02") + b"\x00\x02"
seeds = {
    "hello_label_file": head(1, 0) + b(b"/usr/lib/softhsm/libsofthsm2.so") + b"\x00" + b(b"sealbroker")
    + b"\x01" + b(b"/etc/pin") + struct.pack(">I", 8),
    "hello_slot_inline": head(1, 0) + b(b"m.so") + b"\x01" + struct.pack(">Q", 3) + b"\x00" + b(b"0000")
    + struct.pack(">I", 1),
    "encrypt_aes": head(2, 7) + key + b(bytes(12)) + b(b"aad") + b(bytes(32)),
    "decrypt_rsa": head(3, 8) + b"\x00\x00" + b"\x01\x00" + b(b"") + b(b"") + b(bytes(384)),
    "create_key": head(4, 9) + key + b"\x01",
    # Signing key pairs: mechanism 16 + the algorithm's index (19 = ecdsa-p256).
    "sign_ecdsa": head(5, 10) + key[:-2] + b"\x13\x02" + b"\x06" + b(bytes(32)),
    "verify_ed25519": head(6, 11) + key[:-2] + b"\x15\x02" + b"\x09" + b(b"message") + b(bytes(64)),
    "public_key": head(7, 12) + key[:-2] + b"\x11\x02",
    "ok": head(0x81, 7) + b(bytes(48)),
    "err": head(0x82, 8) + b"\x01" + b(b"C_Decrypt(AES_GCM): C_Decrypt returned GeneralError"),
}
for name, body in seeds.items():
    with open(os.path.join(here, name), "wb") as f:
        f.write(body)
