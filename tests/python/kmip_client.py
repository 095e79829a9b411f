"""Drives sealbroker's KMIP door with PyKMIP's ProxyKmipClient (mutual TLS,
a client certificate with the clientAuth usage), for tests/tests/kmip_door.rs.

    kmip_client.py PORT CERT KEY CA VERSION KEY_NAME   # VERSION: 1.2, 1.4 or 2.0

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


def main(argv):
    port, cert, key, ca, version, name = argv[1:7]
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
        out["get_attributes_missing"] = refusal(lambda: client.get_attributes("no-such-key", ["Name"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
