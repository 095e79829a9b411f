#!/usr/bin/env python3
"""Writes the CycloneDX SBOM of one sealbroker image, reproducibly.

    python3 images/sbom.py --out FILE --image TITLE --digest sha256:... \\
        --created 2026-01-01T00:00:00Z --revision COMMIT --source URL \\
        [--base images/base-packages.txt] \\
        --binary /usr/local/bin/sealbroker target/release/sealbroker sealbroker

images/build.sh calls it once per image, after the image is made, so the
SBOM names the image by its manifest digest. What it lists:

  the image       the SBOM's subject (metadata.component, type container),
                  by title and manifest digest;
  each binary     a file component at its path in the image, with its SHA-256;
  its crates      every crate linked into the binary: `cargo tree -e normal`
                  for the binary's package on x86_64-unknown-linux-gnu, the
                  features the release build resolves, without proc-macros
                  (they run at build time and are not in the binary); with
                  the crate's version, licence expression, package URL and
                  the SHA-256 Cargo.lock pins for its .crate file; and the
                  dependency edges between them;
  the base layer  each Debian package of images/base-packages.txt, at its
                  pinned version (build.sh has already checked it is the
                  installed one).

The document is built and serialised by cyclonedx-python-lib (the CycloneDX
project's own library) and validated against the CycloneDX 1.6 JSON schema
before it is written. Nothing varies between runs: the serial number is
derived from the image digest and the timestamp is the image's.
"""

import argparse
import hashlib
import importlib.metadata
import json
import subprocess
import sys
import tomllib
import uuid
from datetime import datetime
from pathlib import Path

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentScope, ComponentType
from cyclonedx.model.license import LicenseExpression
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

TARGET = "x86_64-unknown-linux-gnu"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def fail(message: str) -> None:
    sys.exit(f"sbom: {message}")


def lock_checksums(root: Path) -> dict:
    """(name, version) -> the .crate SHA-256 Cargo.lock pins."""
    with open(root / "Cargo.lock", "rb") as f:
        lock = tomllib.load(f)
    return {
        (p["name"], p["version"]): p["checksum"]
        for p in lock["package"]
        if p.get("source") == CRATES_IO and "checksum" in p
    }


def crate_tree(root: Path, package: str):
    """The crates linked into `package`'s binary and their edges, from
    `cargo tree`: ({(name, version): (licence, is_workspace)}, {parent: {child}})."""
    out = subprocess.run(
        ["cargo", "tree", "--frozen", "-e", "normal", "-p", package, "--target", TARGET,
         "--prefix", "depth", "--format", "{p}|{l}"],
        cwd=root, capture_output=True, text=True,
    )
    if out.returncode != 0:
        fail(f"cargo tree -p {package} failed: {out.stderr.strip()}")
    crates, edges, stack = {}, {}, []
    skip_below = None
    for line in out.stdout.splitlines():
        digits = len(line) - len(line.lstrip("0123456789"))
        depth, rest = int(line[:digits]), line[digits:]
        if skip_below is not None and depth > skip_below:
            continue
        skip_below = None
        spec, _, licence = rest.partition("|")
        if "(proc-macro)" in spec:
            skip_below = depth
            continue
        words = spec.split()
        if len(words) < 2 or not words[1].startswith("v"):
            fail(f"cannot read cargo tree line {line!r}")
        key = (words[0], words[1][1:])
        workspace = len(words) > 2 and words[2].startswith("(") and words[2] != "(*)"
        crates.setdefault(key, (licence.strip(), workspace))
        del stack[depth:]
        if stack:
            edges.setdefault(stack[-1], set()).add(key)
        stack.append(key)
    return crates, edges


def crate_component(key, licence: str, workspace: bool, checksums: dict) -> Component:
    name, version = key
    licences = []
    if licence:
        # Old crates write "MIT/Apache-2.0"; SPDX says "MIT OR Apache-2.0".
        licences = [LicenseExpression(" OR ".join(part.strip() for part in licence.split("/")))]
    if workspace:
        return Component(
            name=name, version=version, type=ComponentType.LIBRARY, bom_ref=f"crate:{name}@{version}",
            scope=ComponentScope.REQUIRED, licenses=licences,
            properties=[Property(name="sealbroker:source", value="this repository")],
        )
    checksum = checksums.get(key)
    if checksum is None:
        fail(f"Cargo.lock pins no checksum for crates.io crate {name} {version}")
    return Component(
        name=name, version=version, type=ComponentType.LIBRARY, bom_ref=f"crate:{name}@{version}",
        scope=ComponentScope.REQUIRED, licenses=licences,
        purl=PackageURL(type="cargo", name=name, version=version),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=checksum)],
    )


def deb_components(base: Path):
    components = []
    for line in base.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        package, version = line.split()
        arch = subprocess.run(["dpkg-query", "-W", "-f=${Architecture}", package],
                              capture_output=True, text=True).stdout.strip() or "amd64"
        components.append(Component(
            name=package, version=version, type=ComponentType.LIBRARY,
            bom_ref=f"deb:{package}@{version}", scope=ComponentScope.REQUIRED,
            purl=PackageURL(type="deb", namespace="debian", name=package, version=version,
                            qualifiers={"arch": arch, "distro": "debian-12"}),
        ))
    return components


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--image", required=True, help="the image's title label")
    parser.add_argument("--digest", required=True, help="the image's manifest digest")
    parser.add_argument("--created", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--base", help="base-packages.txt, when the image has the base layer")
    parser.add_argument("--binary", nargs=3, action="append", required=True,
                        metavar=("PATH_IN_IMAGE", "FILE", "CARGO_PACKAGE"))
    args = parser.parse_args()
    if not args.digest.startswith("sha256:") or len(args.digest) != 71:
        fail(f"{args.digest!r} is not a sha256:<64 hex> manifest digest")
    root = Path(__file__).resolve().parent.parent

    subject = Component(
        name=args.image, version=args.digest, type=ComponentType.CONTAINER, bom_ref=f"image:{args.image}",
        properties=[
            Property(name="org.opencontainers.image.revision", value=args.revision),
            Property(name="org.opencontainers.image.source", value=args.source),
        ],
    )
    metadata = BomMetaData(component=subject, timestamp=datetime.fromisoformat(args.created))
    metadata.tools.components.add(Component(
        name="cyclonedx-python-lib", version=importlib.metadata.version("cyclonedx-python-lib"),
        type=ComponentType.LIBRARY, group="CycloneDX",
    ))
    metadata.tools.components.add(Component(name="images/sbom.py", type=ComponentType.APPLICATION))
    bom = Bom(
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"sealbroker-sbom:{args.image}@{args.digest}"),
        metadata=metadata,
    )
    rustc = subprocess.run(["rustc", "-V"], cwd=root, capture_output=True, text=True).stdout.strip()

    checksums = lock_checksums(root)
    crate_components = {}
    tops = []
    for path_in_image, file, package in args.binary:
        binary = Component(
            name=path_in_image, type=ComponentType.FILE, bom_ref=f"file:{path_in_image}",
            scope=ComponentScope.REQUIRED,
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha256_file(Path(file)))],
            properties=[
                Property(name="sealbroker:cargo-package", value=package),
                Property(name="sealbroker:rustc", value=rustc),
            ],
        )
        bom.components.add(binary)
        tops.append(binary)
        crates, edges = crate_tree(root, package)
        by_key = {}
        for key, (licence, workspace) in crates.items():
            if key not in crate_components:
                crate_components[key] = crate_component(key, licence, workspace, checksums)
                bom.components.add(crate_components[key])
            by_key[key] = crate_components[key]
        roots = [key for key in crates if key[0] == package]
        if not roots:
            fail(f"cargo tree lists no {package} crate")
        bom.register_dependency(binary, [by_key[roots[0]]])
        for parent, children in edges.items():
            bom.register_dependency(by_key[parent], [by_key[c] for c in children])
    if args.base:
        debs = deb_components(Path(args.base))
        for deb in debs:
            bom.components.add(deb)
        tops.extend(debs)
    bom.register_dependency(subject, tops)

    text = JsonV1Dot6(bom).output_as_string(indent=1)
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if errors:
        fail(f"the SBOM does not validate against CycloneDX 1.6: {errors}")
    # Sorted keys: the library's field order is stable, but say so in bytes.
    Path(args.out).write_text(json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
