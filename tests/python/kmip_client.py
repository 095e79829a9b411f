"""Drives sealbroker's KMIP door with PyKMIP's ProxyKmipClient (mutual TLS,
a client certificate with the clientAuth usage), for tests/tests/kmip_door.rs.

    kmip_client.py PORT CERT KEY CA VERSION KEY_NAME [MODE]
      VERSION: 1.2, 1.4 or 2.0
      MODE: all (the default): discover, query, locate, attributes, refused
            operations, and an AES-GCM encrypt/decrypt round trip with a
            tampered ciphertext;
            encrypt: only an Encrypt under KEY_NAME, reporting a refusal at
            TLS or by the server;
            oaep PUBLIC_KEY_DER: KEY_NAME is an RSA encryption key pair with
            OAEP/SHA-1 (SoftHSM2's only OAEP hash): locate both halves, read
            their attributes, encrypt to either, decrypt with the private
            key, decrypt what `cryptography` encrypted to PUBLIC_KEY_DER,
            and the refusals.

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


OAEP = {
    "cryptographic_algorithm": enums.CryptographicAlgorithm.RSA,
    "padding_method": enums.PaddingMethod.OAEP,
    "hashing_algorithm": enums.HashingAlgorithm.SHA_1,
}


def attribute_values(client, uid, names):
    _, attributes = client.get_attributes(uid, names)
    values = {}
    for a in attributes:
        value = a.attribute_value
        if a.attribute_name.value == "Name":
            values["Name"] = value.name_value.value
        elif hasattr(value, "value") and hasattr(value.value, "name"):
            values[a.attribute_name.value] = value.value.name
        else:
            values[a.attribute_name.value] = value.value
    return values


def oaep(client, name, public_key_der, out):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    factory = AttributeFactory()
    located = lambda n: client.locate(attributes=[factory.create_attribute(enums.AttributeType.NAME, n)])
    out["located_private"] = located(name)
    out["located_public"] = located(name + "/public")
    out["located_signer"] = located("signer")
    # PyKMIP cannot parse a Link attribute value (its attribute factory
    # raises NotImplementedError), so the links are only listed by name.
    names = ["Name", "Object Type", "Cryptographic Algorithm", "Cryptographic Length"]
    out["private_attribute_list"] = sorted(client.get_attribute_list(name))
    private, public = name, name + "/public"
    out["private_attributes"] = attribute_values(client, private, names)
    out["public_attributes"] = attribute_values(client, public, names)

    to_public, _ = client.encrypt(b"to the public key", uid=public, cryptographic_parameters=OAEP)
    out["ciphertext_len"] = len(to_public)
    out["decrypted_public"] = client.decrypt(to_public, uid=private, cryptographic_parameters=OAEP).decode()
    to_private, _ = client.encrypt(b"to the private uid", uid=private)
    out["decrypted_private"] = client.decrypt(to_private, uid=private).decode()
    again, _ = client.encrypt(b"to the public key", uid=public, cryptographic_parameters=OAEP)
    out["randomised"] = again != to_public

    with open(public_key_der, "rb") as f:
        key = serialization.load_der_public_key(f.read())
    outside = key.encrypt(b"made by cryptography",
                          padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    out["decrypted_outside"] = client.decrypt(outside, uid=private, cryptographic_parameters=OAEP).decode()

    tampered = bytearray(to_public)
    tampered[len(tampered) // 2] ^= 1
    out["tampered"] = refusal(lambda: client.decrypt(bytes(tampered), uid=private, cryptographic_parameters=OAEP))
    out["decrypt_with_public"] = refusal(lambda: client.decrypt(to_public, uid=public))
    sha256 = dict(OAEP, hashing_algorithm=enums.HashingAlgorithm.SHA_256)
    out["wrong_hash"] = refusal(lambda: client.encrypt(b"x", uid=public, cryptographic_parameters=sha256))
    out["gcm_on_pair"] = refusal(lambda: client.encrypt(b"x", uid=public, cryptographic_parameters=GCM))
    out["get_private"] = refusal(lambda: client.get(private))
    out["signer_attributes"] = refusal(lambda: client.get_attributes("signer", ["Name"]))


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
    if mode == "oaep":
        with client:
            oaep(client, name, argv[8], out)
        print(json.dumps(out))
        return
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
