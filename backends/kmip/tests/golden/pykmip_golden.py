"""Golden TTLV encodings from PyKMIP, an independent KMIP implementation.

Prints one line per case: a name and the hex PyKMIP's own message classes
write for the fields that src/protocol.rs's test
`requests_encode_exactly_as_pykmip_encodes_them` builds. Run it with the
peers venv after changing a request builder, and paste the new hex:

    ~/.cache/sealbroker-peers/venv/bin/python tests/golden/pykmip_golden.py
"""
import warnings; warnings.filterwarnings("ignore")
from kmip.core import enums, utils, attributes as attrs, objects
from kmip.core.enums import KMIPVersion as V
from kmip.core.messages import contents, messages, payloads
from kmip.core.factories.attributes import AttributeFactory
af = AttributeFactory()

def hx(obj, v):
    s = utils.BytearrayStream(); obj.write(s, kmip_version=v); return s.buffer.hex().upper()

def request(payload, op, version, v):
    hdr = messages.RequestHeader(protocol_version=contents.ProtocolVersion(*version),
        maximum_response_size=contents.MaximumResponseSize(1048576), batch_count=contents.BatchCount(1))
    bi = messages.RequestBatchItem(operation=contents.Operation(op), request_payload=payload)
    return hx(messages.RequestMessage(request_header=hdr, batch_items=[bi]), v)

gcm = attrs.CryptographicParameters(block_cipher_mode=enums.BlockCipherMode.GCM,
    cryptographic_algorithm=enums.CryptographicAlgorithm.AES, iv_length=96, tag_length=16)
cbc = attrs.CryptographicParameters(block_cipher_mode=enums.BlockCipherMode.CBC,
    padding_method=enums.PaddingMethod.PKCS5, cryptographic_algorithm=enums.CryptographicAlgorithm.AES)

print("gcm_encrypt_request_1_4", request(payloads.EncryptRequestPayload(unique_identifier="42",
    cryptographic_parameters=gcm, data=b"\xaa"*4, iv_counter_nonce=b"\x11"*12, auth_additional_data=b"aad"),
    enums.Operation.ENCRYPT, (1,4), V.KMIP_1_4))
print("gcm_decrypt_payload_1_4", hx(payloads.DecryptRequestPayload(unique_identifier="42",
    cryptographic_parameters=gcm, data=b"\xaa"*4, iv_counter_nonce=b"\x11"*12, auth_additional_data=b"aad",
    auth_tag=b"\x22"*16), V.KMIP_1_4))
print("cbc_decrypt_payload_1_2", hx(payloads.DecryptRequestPayload(unique_identifier="7",
    cryptographic_parameters=cbc, data=b"\x01"*16, iv_counter_nonce=b"\x02"*16), V.KMIP_1_2))

def create_payload():
    name = af.create_attribute(enums.AttributeType.NAME, "k")
    ta = objects.TemplateAttribute(attributes=[
        af.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM, enums.CryptographicAlgorithm.AES),
        af.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 256),
        af.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_USAGE_MASK, [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]),
        name])
    return payloads.CreateRequestPayload(object_type=enums.ObjectType.SYMMETRIC_KEY, template_attribute=ta)
print("create_payload_1_2", hx(create_payload(), V.KMIP_1_2))
print("create_payload_2_0", hx(create_payload(), V.KMIP_2_0))
name = af.create_attribute(enums.AttributeType.NAME, "k")
print("locate_payload_1_4", hx(payloads.LocateRequestPayload(attributes=[name]), V.KMIP_1_4))
print("locate_payload_2_0", hx(payloads.LocateRequestPayload(attributes=[name]), V.KMIP_2_0))
names = ["Object Type","State","Cryptographic Algorithm","Cryptographic Length","Cryptographic Usage Mask"]
print("get_attributes_payload_1_2", hx(payloads.GetAttributesRequestPayload(unique_identifier="7", attribute_names=names), V.KMIP_1_2))
print("get_attributes_payload_2_0", hx(payloads.GetAttributesRequestPayload(unique_identifier="7", attribute_names=names), V.KMIP_2_0))
print("discover_versions_request", request(payloads.DiscoverVersionsRequestPayload(protocol_versions=[contents.ProtocolVersion(2,0), contents.ProtocolVersion(1,4), contents.ProtocolVersion(1,3), contents.ProtocolVersion(1,2)]), enums.Operation.DISCOVER_VERSIONS, (1,2), V.KMIP_1_2))
print("activate_request_1_2", request(payloads.ActivateRequestPayload(unique_identifier=attrs.UniqueIdentifier("1")), enums.Operation.ACTIVATE, (1,2), V.KMIP_1_2))

def create_key_pair_payload():
    usage = lambda mask: af.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_USAGE_MASK, [mask])
    return payloads.CreateKeyPairRequestPayload(
        common_template_attribute=objects.CommonTemplateAttribute(attributes=[
            af.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM, enums.CryptographicAlgorithm.RSA),
            af.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 2048)]),
        private_key_template_attribute=objects.PrivateKeyTemplateAttribute(attributes=[
            usage(enums.CryptographicUsageMask.SIGN), af.create_attribute(enums.AttributeType.NAME, "k")]),
        public_key_template_attribute=objects.PublicKeyTemplateAttribute(attributes=[
            usage(enums.CryptographicUsageMask.VERIFY), af.create_attribute(enums.AttributeType.NAME, "k/public")]))
print("create_key_pair_payload_1_2", hx(create_key_pair_payload(), V.KMIP_1_2))
print("create_key_pair_payload_2_0", hx(create_key_pair_payload(), V.KMIP_2_0))
pkcs1 = attrs.CryptographicParameters(padding_method=enums.PaddingMethod.PKCS1v15,
    hashing_algorithm=enums.HashingAlgorithm.SHA_256, cryptographic_algorithm=enums.CryptographicAlgorithm.RSA)
print("sign_payload_1_2", hx(payloads.SignRequestPayload(unique_identifier="7",
    cryptographic_parameters=pkcs1, data=b"msg"), V.KMIP_1_2))
print("get_payload_1_2", hx(payloads.GetRequestPayload(unique_identifier="7"), V.KMIP_1_2))
