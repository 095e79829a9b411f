"""Drives sealbroker's KMIP door with PyKMIP's ProxyKmipClient (mutual TLS,
a client certificate with the clientAuth usage), for tests/tests/kmip_door.rs.

    kmip_client.py PORT CERT KEY CA VERSION KEY_NAME [MODE]
      VERSION: 1.2, 1.4 or 2.0
      MODE: all (the default): discover, query, locate, attributes, refused
            operations, and an AES-GCM encrypt/decrypt round trip with a
            tampered ciphertext;
            encrypt: only an Encrypt under KEY_NAME, reporting a refusal at
            TLS or by the server.

Prints one JSON object with what the server answered, for the Rust test to
assert on; exits non-zero only when PyKMIP itself fails unexpectedly.
"""
import json
import sys
import warnings

warnings.filterwarnings("ignore")

from kmip import enums  # noqa: E402
from kmip.core.enums import KMIPVersion  # noqa: E402
from kmip.core.factories.attributes import AttributeFactory  # noqa: E402
from kmip.pie import exceptions  # noqa: E402
from kmip.pie.client import ProxyKmipClient  # noqa: E402

VERSIONS = {"1.2": KMIPVersion.KMIP_1_2, "1.4": KMIPVersion.KMIP_1_4, "2.0": KMIPVersion.KMIP_2_0}


def refusal(call):
    """The Result Reason and message of a refused operation."""
    try:
        call()
    except exceptions.KmipOperationFailure as e:
        return {"reason": e.reason.name, "message": e.message}
    return {"reason": None}


GCM = {
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
    "block_cipher_mode": enums.BlockCipherMode.GCM,
}


def crypt(client, uid, out):
    """Encrypts with an IV of the client's and without one, decrypts both,
    and decrypts a tampered ciphertext."""
    iv = bytes(range(12))
    sealed, echoed = client.encrypt(b"kmip door plaintext", uid=uid, cryptographic_parameters=GCM,
                                    iv_counter_nonce=iv)
    out["encrypt_iv_echoed"] = echoed is not None
    out["ciphertext_holds_plaintext"] = b"kmip door plaintext" in sealed
    out["decrypted"] = client.decrypt(sealed, uid=uid, cryptographic_parameters=GCM,
                                      iv_counter_nonce=iv).decode()
    sealed2, made_iv = client.encrypt(b"second", uid=uid)
    out["made_iv_len"] = len(made_iv) if made_iv else 0
    out["decrypted_made_iv"] = client.decrypt(sealed2, uid=uid, iv_counter_nonce=made_iv).decode()
    tampered = bytearray(sealed)
    tampered[len(tampered) // 2] ^= 1
    out["tampered"] = refusal(lambda: client.decrypt(bytes(tampered), uid=uid,
                                                     cryptographic_parameters=GCM, iv_counter_nonce=iv))
    out["wrong_iv"] = refusal(lambda: client.decrypt(sealed, uid=uid, cryptographic_parameters=GCM,
                                                     iv_counter_nonce=bytes(12)))


def encrypt_only(client_args, name):
    """One Encrypt, reporting where it was refused."""
    try:
        client = ProxyKmipClient(**client_args)
        client.open()
    except Exception as e:  # a TLS refusal surfaces as one of several types
        return {"refused_at": "tls", "error": type(e).__name__}
    try:
        client.encrypt(b"x", uid=name, cryptographic_parameters=GCM, iv_counter_nonce=bytes(12))
        return {"refused_at": None}
    except exceptions.KmipOperationFailure as e:
        return {"refused_at": "kmip", "reason": e.reason.name, "message": e.message}
    except Exception as e:
        # The handshake's failure may only show on the first read.
        return {"refused_at": "tls", "error": type(e).__name__}
    finally:
        try:
            client.close()
        except Exception:
            pass


def main(argv):
    port, cert, key, ca, version, name = argv[1:7]
    mode = argv[7] if len(argv) > 7 else "all"
    if mode == "encrypt":
        print(json.dumps(encrypt_only(dict(
            hostname="127.0.0.1", port=int(port), cert=cert, key=key, ca=ca,
            config_file="/dev/null", kmip_version=VERSIONS[version]), name)))
        return
    client = ProxyKmipClient(
        hostname="127.0.0.1",
        port=int(port),
        cert=cert,
        key=key,
        ca=ca,
        config_file="/dev/null",
        kmip_version=VERSIONS[version],
    )
    out = {}
    with client:
        discovered = client.proxy.discover_versions()
        out["discover_status"] = discovered.result_status.value.name
        out["versions"] = [f"{v.major}.{v.minor}" for v in discovered.protocol_versions]

        query = client.proxy.query(query_functions=[
            enums.QueryFunction.QUERY_OPERATIONS,
            enums.QueryFunction.QUERY_OBJECTS,
        ])
        out["query_status"] = query.result_status.value.name
        out["operations"] = [op.name for op in query.operations]
        out["object_types"] = [t.name for t in query.object_types]

        name_attribute = AttributeFactory().create_attribute(enums.AttributeType.NAME, name)
        found = client.locate(attributes=[name_attribute])
        out["located"] = found
        missing = AttributeFactory().create_attribute(enums.AttributeType.NAME, "no-such-key")
        out["located_missing"] = client.locate(attributes=[missing])

        if found:
            uid, attributes = client.get_attributes(found[0], [
                "Name", "Object Type", "Cryptographic Algorithm", "Cryptographic Length", "State",
            ])
            out["attributes_uid"] = uid
            values = {}
            for a in attributes:
                value = a.attribute_value
                if a.attribute_name.value == "Name":
                    values["Name"] = value.name_value.value
                elif hasattr(value, "value") and hasattr(value.value, "name"):
                    values[a.attribute_name.value] = value.value.name
                else:
                    values[a.attribute_name.value] = value.value
            out["attributes"] = values
            out["attribute_list"] = client.get_attribute_list(found[0])
            out["get"] = refusal(lambda: client.get(found[0]))
            out["destroy"] = refusal(lambda: client.destroy(found[0]))
            out["create"] = refusal(lambda: client.create(enums.CryptographicAlgorithm.AES, 256, name="new"))
            crypt(client, found[0], out)
        out["get_attributes_missing"] = refusal(lambda: client.get_attributes("no-such-key", ["Name"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
