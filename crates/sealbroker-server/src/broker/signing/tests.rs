//! Signing through the broker with software keys (Development): grants,
//! schemes, inputs and the audit trail.

use sealbroker_core::{Error, Hash, SecretBytes, SignInput, SignScheme};
use sealbroker_testkit::memory::MemoryKind;

use crate::broker::Broker;
use crate::broker::caller::{Call, Caller, Door};
use crate::broker::registry::BackendRegistry;
use crate::config::Config;

struct Fixture {
    broker: Broker,
    _dir: tempfile::TempDir,
    audit: std::path::PathBuf,
}

async fn fixture(extra: &str) -> Result<Fixture, crate::config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let key = |name: &str| dir.path().join(name).display().to_string();
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"/tmp/unused.sock\"\n[audit]\nfile = {audit:?}\n\
         [backends.soft]\ntype = \"software\"\n[backends.mem]\ntype = \"mem\"\n\
         [keys.ca]\nbackend = \"soft\"\nkey_file = {ca:?}\ngenerate = true\nalgorithm = \"ecdsa-p256\"\n\
         allow = {{ sign = [\"uid:7\"], verify = [\"uid:8\"] }}\n\
         [keys.ed]\nbackend = \"soft\"\nkey_file = {ed:?}\ngenerate = true\nalgorithm = \"ed25519\"\n\
         allow = {{ any = [\"uid:7\"] }}\n\
         [keys.seal]\nbackend = \"mem\"\nallow = {{ any = [\"uid:7\"] }}\n{extra}",
        ca = key("ca.key"),
        ed = key("ed.key"),
    );
    let registry = BackendRegistry::default()
        .with(&sealbroker_backend_software::KIND)
        .with(MemoryKind::leak("mem"));
    let broker = Broker::from_config(&Config::parse(&text).unwrap(), &registry).await?;
    Ok(Fixture {
        broker,
        _dir: dir,
        audit,
    })
}

fn uid(n: u32) -> Call {
    Call::new(
        Door::Grpc,
        Caller::Unix {
            uid: n,
            gid: n,
            pid: None,
        },
    )
}

fn audited(fixture: &Fixture) -> Vec<(String, String, String, String)> {
    std::fs::read_to_string(&fixture.audit)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let f = |k: &str| v[k].as_str().unwrap().to_owned();
            (f("caller"), f("operation"), f("key"), f("outcome"))
        })
        .collect()
}

#[tokio::test]
async fn a_signature_verifies_under_the_public_key_and_both_are_audited() {
    let f = fixture("").await.unwrap();
    let message = SignInput::Message(b"tbs certificate");
    let signed = f.broker.sign(&uid(7), "ca", None, None, message).await.unwrap();
    assert_eq!(signed.scheme, SignScheme::Ecdsa(Hash::Sha256));
    assert_eq!(signed.key_version, 1);
    // The verifier checks it, by the broker and by the public key alone.
    let verdict = f
        .broker
        .verify(&uid(8), "ca", None, None, message, &signed.signature)
        .await
        .unwrap();
    assert!(verdict.valid);
    let public = f.broker.public_key(&uid(8), "ca", None).await.unwrap().public;
    assert!(public.verify(signed.scheme, message, &signed.signature).unwrap());
    let verdict = f
        .broker
        .verify(
            &uid(8),
            "ca",
            None,
            None,
            SignInput::Message(b"other"),
            &signed.signature,
        )
        .await
        .unwrap();
    assert!(
        !verdict.valid,
        "a signature over another message is bad, not an error"
    );

    let ed = f.broker.sign(&uid(7), "ed", None, None, message).await.unwrap();
    assert_eq!(ed.signature.len(), 64);

    let lines = audited(&f);
    for (caller, op) in [
        ("unix:uid=7,gid=7", "sign"),
        ("unix:uid=8,gid=8", "verify"),
        ("unix:uid=8,gid=8", "public-key"),
    ] {
        assert!(
            lines
                .iter()
                .any(|(c, o, k, outcome)| c == caller && o == op && k == "ca" && outcome == "ok"),
            "no {op} by {caller}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn a_caller_without_the_sign_grant_is_refused_and_the_refusal_is_audited() {
    let f = fixture("").await.unwrap();
    let message = SignInput::Message(b"m");
    let e = f
        .broker
        .sign(&uid(8), "ca", None, None, message)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
    // A stranger may not read the public key either.
    let e = f.broker.public_key(&uid(9), "ca", None).await.err().unwrap();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
    let lines = audited(&f);
    assert!(
        lines.iter().any(|(c, o, k, outcome)| c == "unix:uid=8,gid=8"
            && o == "sign"
            && k == "ca"
            && outcome == "PermissionDenied"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn signing_keys_do_not_wrap_and_sealing_keys_do_not_sign() {
    let f = fixture("").await.unwrap();
    let e = f
        .broker
        .wrap(&uid(7), "ed", SecretBytes::copy_from(b"dek"), b"")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Precondition(ref m) if m.contains("does not wrap")),
        "{e}"
    );
    let e = f
        .broker
        .sign(&uid(7), "seal", None, None, SignInput::Message(b"m"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Precondition(ref m) if m.contains("does not sign")),
        "{e}"
    );
}

#[tokio::test]
async fn schemes_and_inputs_that_do_not_fit_the_key_are_refused_before_the_backend() {
    let f = fixture("").await.unwrap();
    let m = SignInput::Message(b"m");
    let e = f
        .broker
        .sign(&uid(7), "ca", None, Some(SignScheme::RsaPss(Hash::Sha256)), m)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidArgument { field: "scheme", .. }), "{e}");
    let short = [0u8; 20];
    let e = f
        .broker
        .sign(&uid(7), "ca", None, None, SignInput::Digest(&short))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidArgument { field: "data", .. }), "{e}");
    // A digest of the right length reaches the software backend, which
    // signs messages only, and says so.
    let digest = Hash::Sha256.digest(b"m");
    let e = f
        .broker
        .sign(&uid(7), "ca", None, None, SignInput::Digest(&digest))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("cannot sign a digest"), "{e}");
    let e = f
        .broker
        .sign(&uid(7), "ca", Some(9), None, m)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                field: "key_version",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_signing_key_in_an_ha_ring_is_a_config_error_naming_the_members() {
    let extra = "[keys.ring]\nmembers = [{ backend = \"soft\", key_file = \"/nonexistent/a\", algorithm = \"ed25519\", generate = true }, \
                 { backend = \"mem\" }]\n";
    let dir = tempfile::tempdir().unwrap();
    let extra = extra.replace("/nonexistent/a", &dir.path().join("a").display().to_string());
    let e = fixture(&extra).await.err().expect("a signing ring is refused");
    assert!(e.to_string().contains("keys.ring.members"), "{e}");
}
