#!/usr/bin/env python3
"""Signs an image the way cosign does with a key pair, offline, and writes
the signature as an OCI image layout that skopeo pushes beside the image.

    python3 images/sign.py keygen KEY_PREFIX PASSPHRASE_FILE
    python3 images/sign.py sign KEY PASSPHRASE_FILE REFERENCE DIGEST OUT_LAYOUT
    python3 images/sign.py attach-sbom DIGEST SBOM_FILE OUT_LAYOUT
    python3 images/sign.py sign-blob KEY PASSPHRASE_FILE FILE SIGNATURE_FILE

`keygen` writes KEY_PREFIX.key (ECDSA P-256, PKCS#8 PEM encrypted with the
passphrase) and KEY_PREFIX.pub (PEM SPKI, what verifiers are given).

`sign` makes the cosign "simple signing" payload naming REFERENCE (the
repository, e.g. registry.example/sealbroker) and DIGEST (the manifest's
sha256:...), signs it with ECDSA P-256/SHA-256, and writes OUT_LAYOUT, an
OCI layout whose tag `sha256-<hex>.sig` holds the payload as its one layer
and the signature in the layer's `dev.cosignproject.cosign/signature`
annotation. Pushed to REFERENCE:sha256-<hex>.sig, it is what
`cosign verify --key KEY.pub` and `sealbroker-operator verify-image` read.

`attach-sbom` writes OUT_LAYOUT tagged `sha256-<hex>.sbom` (the tag cosign's
`attach sbom` uses) holding SBOM_FILE, the image's CycloneDX SBOM
(images/build.sh writes them), as its one layer. It prints the tag and the
attachment's manifest digest; `sign` that digest like an image's, so the
SBOM is signed too. It refuses an SBOM that names another image digest.

`sign-blob` signs a file, the plugin binary, and writes the signature as
`cosign sign-blob --key` does: base64 of the DER ECDSA P-256/SHA-256
signature over the file's bytes. `cosign verify-blob --key KEY.pub`,
`openssl dgst -sha256 -verify KEY.pub` (after base64 -d) and
`sealbroker-operator verify-blob` check it.

Why not cosign or skopeo: cosign is not packaged in Debian, and Debian's
skopeo 1.9 is built with sigstore signing disabled ("Debian-local change").
This script uses `cryptography` (installed by tests/peers/install.sh) for
the one cryptographic step; skopeo still does every registry transfer.
"""

import base64
import hashlib
import json
import os
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

PAYLOAD_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SBOM_TYPE = "application/vnd.cyclonedx+json"


def read_passphrase(path: str) -> bytes:
    with open(path, "rb") as f:
        passphrase = f.read().rstrip(b"\n")
    if not passphrase:
        sys.exit(f"sign: {path} is empty: a signing key needs a passphrase")
    return passphrase


def keygen(prefix: str, passphrase_file: str) -> None:
    passphrase = read_passphrase(passphrase_file)
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    fd = os.open(prefix + ".key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(prefix + ".pub", "wb") as f:
        f.write(public)


def blob(layout: str, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def canonical(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def check_digest(digest: str) -> None:
    if not digest.startswith("sha256:") or len(digest) != 71:
        sys.exit(f"sign: {digest!r} is not a sha256:<64 hex> manifest digest")


def load_key(key_file: str, passphrase_file: str):
    with open(key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), read_passphrase(passphrase_file))
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        sys.exit(f"sign: {key_file} is not an ECDSA P-256 key")
    return key


def sign(key_file: str, passphrase_file: str, reference: str, digest: str, layout: str) -> None:
    check_digest(digest)
    if "@" in reference or reference.rsplit("/", 1)[-1].count(":"):
        sys.exit(f"sign: {reference!r} must name a repository, without tag or digest")
    key = load_key(key_file, passphrase_file)
    payload = canonical(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    )
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()

    tag = digest.replace(":", "-") + ".sig"
    write_layout(layout, tag, payload, PAYLOAD_TYPE, {SIGNATURE_ANNOTATION: signature})
    print(tag)


def write_layout(layout: str, tag: str, content: bytes, media_type: str, annotations: dict) -> str:
    """An OCI layout whose one manifest, tagged `tag`, carries `content` as
    its one layer (the cosign attachment shape); returns the manifest digest."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    layer = blob(layout, content)
    config = blob(
        layout,
        canonical(
            {
                "architecture": "",
                "os": "",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ),
    )
    layer_descriptor = {"mediaType": media_type, **layer}
    if annotations:
        layer_descriptor["annotations"] = annotations
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [layer_descriptor],
    }
    manifest_blob = blob(layout, canonical(manifest))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_blob,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    with open(os.path.join(layout, "index.json"), "wb") as f:
        f.write(canonical(index))
    return manifest_blob["digest"]


def attach_sbom(digest: str, sbom_file: str, layout: str) -> None:
    check_digest(digest)
    with open(sbom_file, "rb") as f:
        sbom = f.read()
    document = json.loads(sbom)
    if document.get("bomFormat") != "CycloneDX":
        sys.exit(f"sign: {sbom_file} is not a CycloneDX document")
    if document.get("metadata", {}).get("component", {}).get("version") != digest:
        sys.exit(f"sign: {sbom_file} describes another image, not {digest}")
    tag = digest.replace(":", "-") + ".sbom"
    manifest = write_layout(layout, tag, sbom, SBOM_TYPE, {})
    print(tag, manifest)


def sign_blob(key_file: str, passphrase_file: str, file: str, signature_file: str) -> None:
    key = load_key(key_file, passphrase_file)
    with open(file, "rb") as f:
        data = f.read()
    signature = base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()
    with open(signature_file, "w") as f:
        f.write(signature + "\n")
    print(signature_file)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "keygen":
        keygen(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 7 and sys.argv[1] == "sign":
        sign(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "attach-sbom":
        attach_sbom(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "sign-blob":
        sign_blob(*sys.argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
