"""Drives sealbroker's transit door with hvac, the Python Vault client.

Run by tests/tests/transit.rs against a real daemon. Every check prints
`ok - ...` or `FAIL - ...`; the exit status is 1 if any check failed.

    python transit_hvac.py --url https://127.0.0.1:8200 --token-file TOKEN \
        --ca ca.pem --cert client.pem --key client.key \
        --rogue-cert rogue.pem --rogue-key rogue.key \
        --mount transit --key-name unseal --identity openbao-e2e \
        --plaintext 'secret one' --aad 'cluster-a'
"""

import argparse
import base64
import sys

import hvac
import hvac.exceptions
import requests

from common import failures, run_check


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expect_error(fn, exception_types, what):
    """Calls fn, which must raise one of exception_types; returns the exception."""
    try:
        result = fn()
    except exception_types as e:
        return e
    raise AssertionError(f"{what}: expected {exception_types}, got a success: {result!r}")


def main():
    parser = argparse.ArgumentParser()
    for flag in ("url", "token-file", "ca", "cert", "key", "rogue-cert", "rogue-key",
                 "mount", "key-name", "identity", "plaintext", "aad"):
        parser.add_argument(f"--{flag}", required=True)
    args = parser.parse_args()
    with open(args.token_file) as f:
        token = f.read().strip()
    tls = dict(cert=(args.cert, args.key), verify=args.ca)
    client = hvac.Client(url=args.url, token=token, **tls)
    transit = client.secrets.transit
    secret = args.plaintext.encode()
    aad = b64(args.aad.encode())
    state = {}

    def round_trip():
        sealed = transit.encrypt_data(
            name=args.key_name, plaintext=b64(secret), associated_data=aad, mount_point=args.mount
        )
        ciphertext = sealed["data"]["ciphertext"]
        assert ciphertext.startswith("vault:v1:"), ciphertext
        assert len(ciphertext.split(":")) == 3, ciphertext
        assert sealed["data"]["key_version"] == 1, sealed
        state["ciphertext"] = ciphertext
        opened = transit.decrypt_data(
            name=args.key_name, ciphertext=ciphertext, associated_data=aad, mount_point=args.mount
        )
        got = base64.b64decode(opened["data"]["plaintext"])
        assert got == secret, f"decrypt returned {got!r}"

    def wrong_aad_is_400():
        e = expect_error(
            lambda: transit.decrypt_data(
                name=args.key_name, ciphertext=state["ciphertext"],
                associated_data=b64(b"other"), mount_point=args.mount,
            ),
            hvac.exceptions.InvalidRequest, "decrypt with the wrong AAD",
        )
        assert any("does not authenticate" in m for m in e.errors), e.errors

    def wrong_token_is_forbidden():
        intruder = hvac.Client(url=args.url, token="hvs.not-a-configured-token", **tls)
        e = expect_error(
            lambda: intruder.secrets.transit.encrypt_data(
                name=args.key_name, plaintext=b64(b"x"), mount_point=args.mount
            ),
            hvac.exceptions.Forbidden, "encrypt with a wrong token",
        )
        assert e.errors == ["permission denied"], e.errors
        assert not intruder.is_authenticated(), "a wrong token reads as authenticated"

    def unknown_key_is_4xx():
        e = expect_error(
            lambda: transit.encrypt_data(name="no-such-key", plaintext=b64(b"x"), mount_point=args.mount),
            (hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest),
            "encrypt under an unknown key",
        )
        assert e.errors and "no-such-key" in e.errors[0], e.errors

    def malformed_base64_is_400():
        e = expect_error(
            lambda: transit.encrypt_data(name=args.key_name, plaintext="not base64!", mount_point=args.mount),
            hvac.exceptions.InvalidRequest, "encrypt with malformed base64",
        )
        assert isinstance(e.errors, list) and len(e.errors) == 1, e.errors
        assert "plaintext" in e.errors[0], e.errors

    def junk_json_is_400():
        response = requests.post(
            f"{args.url}/v1/{args.mount}/encrypt/{args.key_name}",
            data=b"{this is not json",
            headers={"X-Vault-Token": token, "Content-Type": "application/json"},
            timeout=10, **tls,
        )
        assert response.status_code == 400, f"{response.status_code}: {response.text}"
        errors = response.json()["errors"]
        assert isinstance(errors, list) and "body" in errors[0], errors

    def bad_ciphertext_format_is_400():
        e = expect_error(
            lambda: transit.decrypt_data(name=args.key_name, ciphertext="vault:v1", mount_point=args.mount),
            hvac.exceptions.InvalidRequest, "decrypt of a malformed ciphertext",
        )
        assert "ciphertext" in e.errors[0], e.errors

    def lookup_self_names_the_identity():
        assert client.is_authenticated(), "is_authenticated() is false"
        looked_up = client.auth.token.lookup_self()
        assert looked_up["data"]["display_name"] == args.identity, looked_up
        assert token not in repr(looked_up), "lookup-self echoed the token"

    def renew_self_is_not_renewable():
        renewed = client.auth.token.renew_self()
        assert renewed["auth"]["renewable"] is False, renewed
        assert token not in repr(renewed), "renew-self echoed the token"

    def read_key_is_vault_shaped():
        key = transit.read_key(name=args.key_name, mount_point=args.mount)["data"]
        assert key["name"] == args.key_name, key
        assert key["latest_version"] == 1, key
        assert key["supports_decryption"] is True, key

    def health_needs_no_token():
        anonymous = hvac.Client(url=args.url, **tls)
        health = anonymous.sys.read_health_status(method="GET")
        assert health["initialized"] is True and health["sealed"] is False, health

    def client_without_our_ca_is_refused():
        for cert in [(args.rogue_cert, args.rogue_key), None]:
            rogue = hvac.Client(url=args.url, token=token, cert=cert, verify=args.ca)
            expect_error(
                lambda: rogue.secrets.transit.encrypt_data(
                    name=args.key_name, plaintext=b64(b"x"), mount_point=args.mount
                ),
                requests.exceptions.RequestException,
                f"a call with client certificate {cert}",
            )

    run_check("encrypt/decrypt round trip with associated_data", round_trip)
    run_check("wrong associated_data is 400", wrong_aad_is_400)
    run_check("wrong token is 403 Forbidden", wrong_token_is_forbidden)
    run_check("unknown key is 4xx", unknown_key_is_4xx)
    run_check("malformed base64 plaintext is 400 with an errors list", malformed_base64_is_400)
    run_check("junk JSON body is 400 with an errors list", junk_json_is_400)
    run_check("malformed vault:vN ciphertext is 400", bad_ciphertext_format_is_400)
    run_check("lookup-self names the identity, not the token", lookup_self_names_the_identity)
    run_check("renew-self answers non-renewable", renew_self_is_not_renewable)
    run_check("read_key is Vault-shaped", read_key_is_vault_shaped)
    run_check("sys/health needs no token", health_needs_no_token)
    run_check("clients without a certificate from our CA are refused", client_without_our_ca_is_refused)

    if failures:
        print(f"\n{len(failures)} check(s) failed: {', '.join(failures)}")
        sys.exit(1)
    print("\nall transit checks passed")


if __name__ == "__main__":
    main()
