"""Key-state changes the Rust backend deliberately cannot make, done with
PyKMIP's own client so the integration tests can check how the backend
reacts to keys that are not Active.

    pykmip_helper.py PORT CERT KEY CA create-pre-active NAME   -> prints the id
    pykmip_helper.py PORT CERT KEY CA revoke ID                -> Deactivated

Run with the peers venv's python (tests/pykmip.rs does this).
"""
import sys
import warnings

warnings.filterwarnings("ignore")

from kmip import enums  # noqa: E402
from kmip.core.enums import KMIPVersion  # noqa: E402
from kmip.pie.client import ProxyKmipClient  # noqa: E402


def main(argv):
    port, cert, key, ca, command, arg = argv[1:7]
    client = ProxyKmipClient(
        hostname="127.0.0.1",
        port=int(port),
        cert=cert,
        key=key,
        ca=ca,
        config_file="/dev/null",
        kmip_version=KMIPVersion.KMIP_1_2,
    )
    with client:
        if command == "create-pre-active":
            unique_id = client.create(
                enums.CryptographicAlgorithm.AES,
                256,
                name=arg,
                cryptographic_usage_mask=[
                    enums.CryptographicUsageMask.ENCRYPT,
                    enums.CryptographicUsageMask.DECRYPT,
                ],
            )
            print(unique_id)
        elif command == "revoke":
            client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, arg)
        else:
            raise SystemExit("unknown command " + command)


if __name__ == "__main__":
    main(sys.argv)
