"""Writes KMIP response messages, encoded by PyKMIP, as fuzz seeds.

    ~/.cache/sealbroker-peers/venv/bin/python tests/golden/pykmip_seeds.py ../../crates/sealbroker-ttlv/fuzz/seeds/ttlv_decode
"""
import os
import sys
import warnings

warnings.filterwarnings("ignore")
from kmip.core import enums, utils, attributes as attrs, primitives
from kmip.core.enums import KMIPVersion as V
from kmip.core.factories.attributes import AttributeFactory
from kmip.core.messages import contents, messages, payloads

out = sys.argv[1]
af = AttributeFactory()


def response(op, payload, version, v, status=enums.ResultStatus.SUCCESS, reason=None, message=None):
    header = messages.ResponseHeader(
        protocol_version=contents.ProtocolVersion(*version),
        time_stamp=contents.TimeStamp(1700000000),
        batch_count=contents.BatchCount(1),
    )
    item = messages.ResponseBatchItem(
        operation=contents.Operation(op) if op else None,
        result_status=contents.ResultStatus(status),
        result_reason=contents.ResultReason(reason) if reason else None,
        result_message=contents.ResultMessage(message) if message else None,
        response_payload=payload,
    )
    stream = utils.BytearrayStream()
    messages.ResponseMessage(response_header=header, batch_items=[item]).write(stream, kmip_version=v)
    return bytes(stream.buffer)


attributes = [
    af.create_attribute(enums.AttributeType.STATE, enums.State.ACTIVE),
    af.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM, enums.CryptographicAlgorithm.AES),
    af.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 256),
]
seeds = {
    "encrypt_gcm_1_4": response(
        enums.Operation.ENCRYPT,
        payloads.EncryptResponsePayload(unique_identifier="1", data=b"\x01" * 32, auth_tag=b"\x02" * 16),
        (1, 4), V.KMIP_1_4),
    "decrypt_1_2": response(
        enums.Operation.DECRYPT,
        payloads.DecryptResponsePayload(unique_identifier="1", data=b"\x03" * 32), (1, 2), V.KMIP_1_2),
    "get_attributes_1_4": response(
        enums.Operation.GET_ATTRIBUTES,
        payloads.GetAttributesResponsePayload(unique_identifier="1", attributes=attributes), (1, 4), V.KMIP_1_4),
    "get_attributes_2_0": response(
        enums.Operation.GET_ATTRIBUTES,
        payloads.GetAttributesResponsePayload(unique_identifier="1", attributes=attributes), (2, 0), V.KMIP_2_0),
    "locate_1_4": response(
        enums.Operation.LOCATE, payloads.LocateResponsePayload(unique_identifiers=["1", "2"]), (1, 4), V.KMIP_1_4),
    "discover_versions": response(
        enums.Operation.DISCOVER_VERSIONS,
        payloads.DiscoverVersionsResponsePayload(
            protocol_versions=[contents.ProtocolVersion(2, 0), contents.ProtocolVersion(1, 4)]),
        (1, 2), V.KMIP_1_2),
    "item_not_found": response(
        enums.Operation.GET_ATTRIBUTES, None, (1, 4), V.KMIP_1_4, enums.ResultStatus.OPERATION_FAILED,
        enums.ResultReason.ITEM_NOT_FOUND, "Could not locate object: 99"),
    "authentication_not_successful": response(
        None, None, (1, 0), V.KMIP_1_0, enums.ResultStatus.OPERATION_FAILED,
        enums.ResultReason.AUTHENTICATION_NOT_SUCCESSFUL, "Error verifying the client certificate."),
}
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    print(name, len(data))
