//! Writes the seed corpora of the core fuzz targets from real wraps by the
//! fixture key ring (fixed software keys, so the fuzzer can open them):
//!
//!   cargo run --manifest-path crates/sealbroker-core/fuzz/Cargo.toml --example seeds
//!
//! DEKs and IVs are random, so every run writes different (equally good) bytes.

use std::path::Path;

use futures::executor::block_on;
use sealbroker_core::{KeyRing, Mechanism, WrappedBlob};
use sealbroker_core_fuzz::{UnwrapInput, key_ring, key_ring_before_retirement};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn wrap(ring: &KeyRing, key: &str, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    block_on(ring.wrap(key, plaintext, aad)).unwrap().blob
}

fn main() {
    let ring = key_ring();
    // (seed name, key, plaintext, AAD): an OpenBao root key, a kube DEK seed, a bare secret.
    let cases: [(&str, &str, &[u8], &[u8]); 4] = [
        ("unseal_ha_openbao_root_key", "unseal", &[0x5a; 32], b"cluster-a"),
        ("unseal_ha_no_aad", "unseal", b"my secret", b""),
        ("other_kube_dek_seed", "other", &[7; 32], b""),
        ("other_empty_plaintext", "other", b"", b"ctx"),
    ];
    for (name, key, plaintext, aad) in cases {
        let blob = wrap(&ring, key, plaintext, aad);
        write("blob_decode", name, &blob);
        write(
            "keyring_unwrap",
            name,
            &UnwrapInput::encode(Some(key), aad, &blob),
        );
        write(
            "keyring_unwrap",
            &format!("{name}_unnamed"),
            &UnwrapInput::encode(None, aad, &blob),
        );
    }
    // A blob wrapped under `retired` version 1, before its retirement.
    let old = wrap(&key_ring_before_retirement(), "retired", b"old secret", b"");
    write("blob_decode", "retired_v1", &old);
    write(
        "keyring_unwrap",
        "retired_v1",
        &UnwrapInput::encode(Some("retired"), b"", &old),
    );
    let current = wrap(&ring, "retired", b"new secret", b"");
    write(
        "keyring_unwrap",
        "retired_v2",
        &UnwrapInput::encode(None, b"", &current),
    );
    // Wrong key named, and the HA blob with one DEK entry gone.
    let ha = wrap(&ring, "unseal", b"ha secret", b"a");
    write(
        "keyring_unwrap",
        "wrong_key_named",
        &UnwrapInput::encode(Some("other"), b"a", &ha),
    );
    let mut one_member = WrappedBlob::from_bytes(&ha).unwrap();
    one_member.deks.remove(0);
    write(
        "keyring_unwrap",
        "ha_second_member_only",
        &UnwrapInput::encode(Some("unseal"), b"a", &one_member.to_bytes()),
    );
    // The DEK shapes other backends record (RSA-OAEP from PKCS#11, CBC from
    // KMIP, service-defined with metadata from transit and cloud KMS),
    // grafted onto a real blob so the decoder sees every field populated.
    let mut shapes = WrappedBlob::from_bytes(&ha).unwrap();
    let template = shapes.deks[0].clone();
    let mut rsa = template.clone();
    rsa.mechanism = Mechanism::RsaOaep as i32;
    rsa.iv.clear();
    rsa.oaep_hash = "sha256".into();
    rsa.backend = "pkcs11".into();
    let mut cbc = template.clone();
    cbc.mechanism = Mechanism::AesCbcPad as i32;
    cbc.iv = vec![9; 16];
    cbc.backend = "kmip".into();
    let mut service = template;
    service.mechanism = Mechanism::ServiceDefined as i32;
    service.iv.clear();
    service.backend = "transit".into();
    service.backend_metadata = [("key_version".to_owned(), "3".to_owned())].into();
    shapes.deks.extend([rsa, cbc, service]);
    write("blob_decode", "every_dek_mechanism", &shapes.to_bytes());
    write(
        "keyring_unwrap",
        "every_dek_mechanism",
        &UnwrapInput::encode(Some("unseal"), b"a", &shapes.to_bytes()),
    );
    println!("seeds written under {}/seeds", env!("CARGO_MANIFEST_DIR"));
}
