//! OpenBao 2.7.2's External Keys through sealbroker: the KMS plugin in
//! sidecar mode (`endpoint` to a Hardened daemon on SoftHSM2) serves
//! `sys/external-keys`, so a PKI root CA and a transit signing key live on
//! the token and never leave it. And the same calls through the gRPC door
//! on AWS KMS keys (moto), on OpenBao transit keys (a dev OpenBao 2.7.2),
//! on KMIP keys (a PyKMIP server), on Google Cloud KMS keys and on Azure
//! Key Vault keys (the in-repo
//! stand-ins, `backends/gcpckms/tests/fake_gcp.rs` and
//! `backends/azurekeyvault/tests/standin/`: there is no emulator of either),
//! made by `sealbroker keygen`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use sealbroker_e2e::openbao::{BaoConfig, OpenBao};
use sealbroker_e2e::*;

/// The Cloud KMS stand-in (`start_fake`, `pki`, the OAuth client's values).
#[path = "../../backends/gcpckms/tests/fake_gcp.rs"]
#[allow(dead_code, unused_imports, clippy::all)]
mod fake_gcp;

/// The Key Vault stand-in.
#[path = "../../backends/azurekeyvault/tests/standin/mod.rs"]
mod azure_standin;

const PIN: &str = "external-keys-pin-6617";

/// A Hardened daemon on `socket`: the seal key `unseal`, the CA key
/// `pki-root` (ECDSA P-256), the transit signer `signer` (RSA-2048), the
/// sealing key `transit-aes`, and `verify-only` (ECDSA P-256) whose sign
/// grant goes to another uid, and `oaep` (an RSA-2048 encryption pair).
fn daemon_config(dir: &Path, token: &SoftHsmToken, socket: &Path) -> PathBuf {
    let uid = current_uid();
    let pair = |name: &str, algorithm: &str, allow: &str| {
        format!(
            "[keys.{name}]\nbackend = \"hsm\"\nkey_label = \"{name}\"\nalgorithm = \"{algorithm}\"\n{allow}\n"
        )
    };
    let ours = format!("allow = {{ sign = [\"uid:{uid}\"], verify = [\"uid:{uid}\"] }}");
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{socket}\"\n{audit}{backend}\
         [keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{callers}\
         [keys.transit-aes]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{callers}\
         {root}{signer}{verify_only}{oaep}",
        socket = socket.display(),
        audit = audit_toml(dir, "unseal"),
        backend = token.backend_toml("hsm"),
        callers = allow_test_callers(),
        root = pair("pki-root", "ecdsa-p256", &ours),
        signer = pair("signer", "rsa-2048", &ours),
        verify_only = pair(
            "verify-only",
            "ecdsa-p256",
            &format!("allow = {{ sign = [\"uid:4242\"], verify = [\"uid:{uid}\"] }}")
        ),
        // SoftHSM2 does OAEP with SHA-1 only.
        oaep = pair(
            "oaep",
            "rsa-2048",
            &format!(
                "mechanism = \"RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha1\"\n\
                 allow = {{ encrypt = [\"uid:{uid}\"], decrypt = [\"uid:{uid}\"] }}"
            )
        ),
    );
    let path = dir.join("daemon.toml");
    fs::write(&path, text).unwrap();
    for key in ["pki-root", "signer", "verify-only", "oaep"] {
        let out = run_cli(
            &["keygen", "--config", path.to_str().unwrap(), "--key", key],
            b"",
            &[("SOFTHSM2_CONF", token.conf.as_path())],
        );
        assert!(
            out.status.success(),
            "keygen {key}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The `Usage` and `Access` lines OpenSC's pkcs11-tool prints for the
/// private key labelled `label`, read from the token out of process.
fn private_key_access(token: &SoftHsmToken, label: &str) -> String {
    let out = Command::new("pkcs11-tool")
        .args([
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            &token.label,
            "--login",
            "--pin",
            PIN,
        ])
        .args(["--list-objects", "--type", "privkey"])
        .env("SOFTHSM2_CONF", &token.conf)
        .output()
        .expect("pkcs11-tool (Debian opensc) runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let blocks: Vec<&str> = text
        .split("Private Key Object")
        .filter(|block| block.lines().any(|l| l.trim() == format!("label:      {label}")))
        .collect();
    assert_eq!(blocks.len(), 1, "not one private key labelled {label}:\n{text}");
    let line = |prefix: &str| {
        blocks[0]
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    format!("{} / {}", line("Usage:"), line("Access:"))
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_pki_and_transit_sign_with_keys_that_never_leave_the_hsm() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "extkeys", "unseal-key", PIN);
    let socket = dir.path().join("sb.sock");
    let config = daemon_config(dir.path(), &token, &socket);
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("daemon.log")).await;
    let bao_dir = dir.path().join("bao");
    fs::create_dir_all(&bao_dir).unwrap();
    let endpoint = format!("endpoint=unix://{}", socket.display());
    let bao = OpenBao::start(
        &BaoConfig::write(
            &bao_dir,
            &format!(
                "seal \"sealbroker\" {{\n  endpoint = \"unix://{}\"\n  key_name = \"unseal\"\n}}",
                socket.display()
            ),
        ),
        &[],
        "bao.log",
    );
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    let t = Some(root.as_str());

    // The External Keys registry: one config for the daemon, keys by name.
    bao.must(
        &[
            "write",
            "sys/external-keys/configs/hsm",
            "plugin=sealbroker",
            &endpoint,
        ],
        t,
    );
    for (name, key) in [
        ("root", "pki-root"),
        ("signer", "signer"),
        ("aes", "transit-aes"),
        ("vo", "verify-only"),
        ("oaep", "oaep"),
    ] {
        let version = if key == "pki-root" {
            vec!["version=1"]
        } else {
            vec![]
        };
        let mut args = vec![
            "write".to_owned(),
            format!("sys/external-keys/configs/hsm/keys/{name}"),
            format!("key={key}"),
        ];
        args.extend(version.into_iter().map(str::to_owned));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bao.must(&args, t);
    }
    for (name, mount) in [
        ("root", "pki"),
        ("vo", "pki-refused"),
        ("signer", "transit"),
        ("aes", "transit"),
        ("oaep", "transit"),
    ] {
        bao.must(
            &[
                "write",
                "-f",
                &format!("sys/external-keys/configs/hsm/keys/{name}/grants/{mount}"),
            ],
            t,
        );
    }

    // PKI: a root CA whose key is the token's, and a leaf it issues.
    bao.must(&["secrets", "enable", "pki"], t);
    bao.must(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"], t);
    let generated = json(&bao.must(
        &[
            "write",
            "-format=json",
            "pki/root/generate/kms",
            "common_name=sealbroker external keys test root",
            "external_key_ref=hsm:root",
            "ttl=8760h",
        ],
        t,
    ));
    let ca_pem = generated["data"]["certificate"].as_str().unwrap().to_owned();
    bao.must(
        &[
            "write",
            "pki/roles/leaf",
            "allowed_domains=example.test",
            "allow_subdomains=true",
            "max_ttl=72h",
        ],
        t,
    );
    let issued = json(&bao.must(
        &[
            "write",
            "-format=json",
            "pki/issue/leaf",
            "common_name=app.example.test",
            "ttl=24h",
        ],
        t,
    ));
    let leaf_pem = issued["data"]["certificate"].as_str().unwrap();
    let ca = dir.path().join("ca.pem");
    let leaf = dir.path().join("leaf.pem");
    fs::write(&ca, &ca_pem).unwrap();
    fs::write(&leaf, leaf_pem).unwrap();
    let verified = openssl(&["verify", "-CAfile", ca.to_str().unwrap(), leaf.to_str().unwrap()]);
    assert_eq!(verified.trim(), format!("{}: OK", leaf.display()));
    // The CA certificate carries the token's public key, and the private
    // half stayed sensitive and never extractable.
    let ca_public = openssl(&["x509", "-in", ca.to_str().unwrap(), "-pubkey", "-noout"]);
    let mut client = daemon.unix_client().await;
    let public = client
        .get_public_key(sealbroker_proto::sealbroker::v1::GetPublicKeyRequest {
            key_name: "pki-root".into(),
            key_version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(public.algorithm, "ecdsa-p256");
    assert_eq!(ca_public, public.pem);
    assert_eq!(
        private_key_access(&token, "pki-root"),
        "Usage:      sign / Access:     sensitive, always sensitive, never extractable, local"
    );

    // Transit: an external-key signs and verifies on the token (RSA-2048).
    bao.must(&["secrets", "enable", "transit"], t);
    bao.must(
        &[
            "write",
            "transit/keys/ext",
            "type=external-key",
            "external_key_ref=hsm:signer",
        ],
        t,
    );
    let input = base64::engine::general_purpose::STANDARD.encode(b"release manifest v1.2.3");
    let other = base64::engine::general_purpose::STANDARD.encode(b"release manifest v6.6.6");
    let signed = json(&bao.must(
        &[
            "write",
            "-format=json",
            "transit/sign/ext",
            &format!("input={input}"),
        ],
        t,
    ));
    let signature = signed["data"]["signature"].as_str().unwrap().to_owned();
    for (data, expected) in [(&input, true), (&other, false)] {
        let verified = json(&bao.must(
            &[
                "write",
                "-format=json",
                "transit/verify/ext",
                &format!("input={data}"),
                &format!("signature={signature}"),
            ],
            t,
        ));
        assert_eq!(verified["data"]["valid"], expected, "{verified}");
    }
    // And an external key on a sealing key encrypts and decrypts (Wrap and
    // Unwrap; the ciphertext is a sealbroker blob).
    bao.must(
        &[
            "write",
            "transit/keys/ext-aes",
            "type=external-key",
            "external_key_ref=hsm:aes",
        ],
        t,
    );
    let plaintext = base64::engine::general_purpose::STANDARD.encode(b"card 4111 1111 1111 1111");
    let encrypted = json(&bao.must(
        &[
            "write",
            "-format=json",
            "transit/encrypt/ext-aes",
            &format!("plaintext={plaintext}"),
        ],
        t,
    ));
    let ciphertext = encrypted["data"]["ciphertext"].as_str().unwrap().to_owned();
    let decrypted = json(&bao.must(
        &[
            "write",
            "-format=json",
            "transit/decrypt/ext-aes",
            &format!("ciphertext={ciphertext}"),
        ],
        t,
    ));
    assert_eq!(decrypted["data"]["plaintext"], plaintext.as_str());

    // And on an RSA encryption pair: RSA-OAEP on the token.
    bao.must(
        &[
            "write",
            "transit/keys/ext-rsa",
            "type=external-key",
            "external_key_ref=hsm:oaep",
        ],
        t,
    );
    let encrypt = |name: &str| {
        let out = json(&bao.must(
            &[
                "write",
                "-format=json",
                &format!("transit/encrypt/{name}"),
                &format!("plaintext={plaintext}"),
            ],
            t,
        ));
        out["data"]["ciphertext"].as_str().unwrap().to_owned()
    };
    let (first, second) = (encrypt("ext-rsa"), encrypt("ext-rsa"));
    assert_ne!(first, second, "OAEP is randomised");
    for ciphertext in [&first, &second] {
        let decrypted = json(&bao.must(
            &[
                "write",
                "-format=json",
                "transit/decrypt/ext-rsa",
                &format!("ciphertext={ciphertext}"),
            ],
            t,
        ));
        assert_eq!(decrypted["data"]["plaintext"], plaintext.as_str());
    }
    // A changed ciphertext does not open.
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(first.rsplit(':').next().unwrap())
        .unwrap();
    raw[100] ^= 1;
    let prefix = &first[..first.rfind(':').unwrap() + 1];
    let tampered = format!(
        "{prefix}{}",
        base64::engine::general_purpose::STANDARD.encode(&raw)
    );
    let out = bao.cli(
        &[
            "write",
            "transit/decrypt/ext-rsa",
            &format!("ciphertext={tampered}"),
        ],
        t,
    );
    assert!(!out.status.success(), "a tampered RSA-OAEP ciphertext opened");

    // Refused: a key whose sign grant is another uid's cannot become a CA.
    bao.must(&["secrets", "enable", "-path=pki-refused", "pki"], t);
    let out = bao.cli(
        &[
            "write",
            "pki-refused/root/generate/kms",
            "common_name=not allowed",
            "external_key_ref=hsm:vo",
        ],
        t,
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a CA was made with a key we may not sign with: {said}"
    );
    assert!(said.contains("PermissionDenied"), "{said}");
    bao.stop();
    let logs = daemon.logs();
    daemon.terminate();
    assert!(!logs.contains(PIN), "the PIN reached the daemon's log");

    // Every signature was audited; the refusal too.
    let audit: Vec<serde_json::Value> = fs::read_to_string(audit_log(dir.path()))
        .unwrap()
        .lines()
        .map(json)
        .collect();
    let count = |key: &str, operation: &str, outcome: &str| {
        audit
            .iter()
            .filter(|l| l["key"] == key && l["operation"] == operation && l["outcome"] == outcome)
            .count()
    };
    assert!(
        count("pki-root", "sign", "ok") >= 2,
        "the root and the leaf: {audit:#?}"
    );
    assert!(count("signer", "sign", "ok") >= 1);
    assert!(count("signer", "verify", "ok") >= 2);
    assert_eq!(count("oaep", "encrypt", "ok"), 2, "{audit:#?}");
    assert_eq!(count("oaep", "decrypt", "ok"), 2, "{audit:#?}");
    assert_eq!(count("oaep", "decrypt", "FailedPrecondition"), 1, "{audit:#?}");
    assert!(
        count("verify-only", "sign", "PermissionDenied") >= 1,
        "{audit:#?}"
    );
}

use sealbroker_e2e::moto::Moto;

const AWS_SECRET: &str = "aws-external-keys-secret-4471";

/// A Development daemon (moto speaks plain HTTP) on moto's KMS: the
/// sealing key `unseal`, the CA key `ca` (ECDSA P-384), the signer `signer`
/// (RSA-2048) and `oaep` (an RSA-2048 encryption pair), each made by
/// `sealbroker keygen` under its alias.
fn aws_daemon_config(dir: &Path, moto: &Moto, socket: &Path) -> PathBuf {
    let creds = dir.join("aws-credentials");
    fs::write(
        &creds,
        format!("[default]\naws_access_key_id = AKIDEXTERNALKEYS\naws_secret_access_key = {AWS_SECRET}\n"),
    )
    .unwrap();
    let key = |name: &str, rest: &str| {
        format!("[keys.{name}]\nbackend = \"aws\"\nkey_id = \"alias/{name}\"\n{rest}")
    };
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{socket}\"\nstate_dir = \"{state}\"\n{audit}\
         [backends.aws]\ntype = \"awskms\"\nregion = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
         credentials_file = \"{creds}\"\n{unseal}{ca}{signer}{oaep}",
        socket = socket.display(),
        state = dir.join("state").display(),
        audit = audit_toml(dir, "unseal"),
        port = moto.port,
        creds = creds.display(),
        unseal = key("unseal", ""),
        ca = key("ca", "algorithm = \"ecdsa-p384\"\n"),
        signer = key("signer", "algorithm = \"rsa-2048\"\n"),
        oaep = key(
            "oaep",
            "algorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"\n"
        ),
    );
    let path = dir.join("daemon.toml");
    fs::write(&path, text).unwrap();
    for (key, shape) in [
        ("unseal", "SYMMETRIC_DEFAULT/ENCRYPT_DECRYPT"),
        ("ca", "ECC_NIST_P384/SIGN_VERIFY"),
        ("signer", "RSA_2048/SIGN_VERIFY"),
        ("oaep", "RSA_2048/ENCRYPT_DECRYPT"),
    ] {
        let out = run_cli(
            &["keygen", "--config", path.to_str().unwrap(), "--key", key],
            b"",
            &[],
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "keygen {key}: {said}");
        assert!(
            said.contains(shape)
                && said.contains(&format!("alias/{key}"))
                && said.contains("never extractable"),
            "keygen {key}: {said}"
        );
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_keys_sign_verify_and_decrypt_through_the_grpc_door() {
    use sealbroker_core::{PublicKey, SignInput, SignScheme};
    use sealbroker_proto::sealbroker::v1::*;
    use tonic::Code;

    sweep::secret(AWS_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let socket = dir.path().join("sb.sock");
    let config = aws_daemon_config(dir.path(), &moto, &socket);
    let daemon = Daemon::serve(&config, None, &dir.path().join("daemon.log")).await;
    let mut c = daemon.unix_client().await;
    let message = b"release manifest v1.2.3".to_vec();
    let public_key = |reply: GetPublicKeyResponse| {
        let public = PublicKey::from_spki_der(&reply.spki_der).unwrap();
        assert_eq!(public.algorithm.as_str(), reply.algorithm);
        assert_eq!(public.pem(), reply.pem);
        public
    };
    let sign = |key: &str, scheme: &str| SignRequest {
        key_name: key.into(),
        key_version: 0,
        data: message.clone(),
        prehashed: false,
        scheme: scheme.into(),
    };
    let verify = |key: &str, version: u32, scheme: &str, signature: &[u8]| VerifyRequest {
        key_name: key.into(),
        key_version: version,
        data: message.clone(),
        prehashed: false,
        scheme: scheme.into(),
        signature: signature.to_vec(),
    };

    // Message mode (moto hashes a DIGEST again, so digest mode is checked
    // on the wire in backends/awskms/tests/signing.rs, not here).
    for (key, scheme, default) in [
        ("ca", "", "ecdsa-sha384"),
        ("signer", "", "rsa-pkcs1-sha256"),
        ("signer", "rsa-pkcs1-sha512", "rsa-pkcs1-sha512"),
    ] {
        let public = public_key(
            c.get_public_key(GetPublicKeyRequest {
                key_name: key.into(),
                key_version: 0,
            })
            .await
            .unwrap()
            .into_inner(),
        );
        let signed = c.sign(sign(key, scheme)).await.unwrap().into_inner();
        assert_eq!((signed.key_version, signed.scheme.as_str()), (1, default));
        let valid = |reply: VerifyResponse| reply.valid;
        assert!(valid(
            c.verify(verify(key, 0, scheme, &signed.signature))
                .await
                .unwrap()
                .into_inner()
        ));
        let mut changed = signed.signature.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(!valid(
            c.verify(verify(key, 0, scheme, &changed))
                .await
                .unwrap()
                .into_inner()
        ));
        // The signature is real: ring checks it with the public key alone.
        let parsed = SignScheme::parse(default).unwrap();
        assert_eq!(
            public.verify(parsed, SignInput::Message(&message), &signed.signature),
            Ok(true),
            "{key} {default}"
        );
    }

    // Refusals: a scheme the key cannot make, a hash AWS does not pair with
    // the curve, a key that does not sign.
    for (key, scheme, code, says) in [
        (
            "ca",
            "rsa-pss-sha256",
            Code::InvalidArgument,
            "cannot sign with rsa-pss-sha256",
        ),
        (
            "ca",
            "ecdsa-sha256",
            Code::InvalidArgument,
            "only as ecdsa-sha384",
        ),
        ("oaep", "", Code::InvalidArgument, "does not sign"),
        ("unseal", "", Code::FailedPrecondition, "symmetric sealing key"),
    ] {
        let status = c.sign(sign(key, scheme)).await.unwrap_err();
        assert_eq!(status.code(), code, "{key} {scheme}: {status:?}");
        assert!(status.message().contains(says), "{key} {scheme}: {status:?}");
    }

    // RSA-OAEP on the encryption pair; a changed ciphertext does not open.
    grpc_oaep_round_trip(&mut c, "oaep", None).await;

    // The sealing key made by keygen seals.
    grpc_wrap_round_trip(&mut c, "unseal").await;

    // Rotation: version 2 of the signer is a new key pair under
    // alias/signer-v2; version 1 still verifies what it signed.
    grpc_rotation_keeps_version_1(
        &mut c,
        "signer",
        SignScheme::RsaPkcs1v15(sealbroker_core::Hash::Sha256),
        &message,
    )
    .await;

    let logs = daemon.logs();
    daemon.terminate();
    assert!(
        !logs.contains(AWS_SECRET),
        "the AWS secret key reached the daemon's log"
    );
    assert!(
        !logs.contains("4111 1111"),
        "a decrypted secret reached the daemon's log"
    );
    let audit: Vec<serde_json::Value> = fs::read_to_string(audit_log(dir.path()))
        .unwrap()
        .lines()
        .map(json)
        .collect();
    let count = |key: &str, operation: &str, outcome: &str| {
        audit
            .iter()
            .filter(|l| l["key"] == key && l["operation"] == operation && l["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("signer", "sign", "ok"), 4, "{audit:#?}");
    assert_eq!(count("oaep", "decrypt", "ok"), 2, "{audit:#?}");
    assert_eq!(count("oaep", "decrypt", "FailedPrecondition"), 1, "{audit:#?}");
}

/// A Development daemon on a dev OpenBao 2.7.2's transit engine (plain
/// HTTP): `ca` (ECDSA P-256), `signer` (RSA-2048, PSS), `ed` (Ed25519) and
/// `oaep` (an RSA-2048 encryption pair), each made by `sealbroker keygen`.
fn transit_daemon_config(dir: &Path, dev: &sealbroker_e2e::openbao::DevServer, socket: &Path) -> PathBuf {
    dev.bao
        .must(&["secrets", "enable", "transit"], Some(&dev.root_token));
    let token = dir.join("bao-token");
    fs::write(&token, &dev.root_token).unwrap();
    fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let key =
        |name: &str, rest: &str| format!("[keys.{name}]\nbackend = \"bao\"\nkey_name = \"{name}\"\n{rest}");
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{socket}\"\nstate_dir = \"{state}\"\n{audit}\
         [backends.bao]\ntype = \"transit\"\naddress = \"{address}\"\ntoken_file = \"{token}\"\n\
         {unseal}{ca}{signer}{ed}{oaep}",
        socket = socket.display(),
        state = dir.join("state").display(),
        audit = audit_toml(dir, "unseal"),
        address = dev.bao.addr,
        token = token.display(),
        unseal = key("unseal", ""),
        ca = key("ca", "algorithm = \"ecdsa-p256\"\n"),
        signer = key("signer", "algorithm = \"rsa-2048\"\n"),
        ed = key("ed", "algorithm = \"ed25519\"\n"),
        oaep = key(
            "oaep",
            "algorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"\n"
        ),
    );
    let path = dir.join("daemon.toml");
    fs::write(&path, text).unwrap();
    for key in ["unseal", "ca", "signer", "ed", "oaep"] {
        let out = run_cli(
            &["keygen", "--config", path.to_str().unwrap(), "--key", key],
            b"",
            &[],
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "keygen {key}: {said}");
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_transit_keys_sign_verify_and_decrypt_through_the_grpc_door() {
    use sealbroker_core::{Hash, PublicKey, SignInput, SignScheme};
    use sealbroker_proto::sealbroker::v1::*;
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let bao_home = dir.path().join("bao");
    fs::create_dir_all(&bao_home).unwrap();
    let dev = sealbroker_e2e::openbao::DevServer::start(&bao_home);
    let socket = dir.path().join("sb.sock");
    let config = transit_daemon_config(dir.path(), &dev, &socket);
    let daemon = Daemon::serve(&config, None, &dir.path().join("daemon.log")).await;
    let mut c = daemon.unix_client().await;
    let message = b"release manifest v1.2.3".to_vec();
    let sign = |key: &str, scheme: &str, data: &[u8], prehashed: bool| SignRequest {
        key_name: key.into(),
        key_version: 0,
        data: data.to_vec(),
        prehashed,
        scheme: scheme.into(),
    };
    let verify = |key: &str, version: u32, scheme: &str, data: &[u8], prehashed: bool, signature: &[u8]| {
        VerifyRequest {
            key_name: key.into(),
            key_version: version,
            data: data.to_vec(),
            prehashed,
            scheme: scheme.into(),
            signature: signature.to_vec(),
        }
    };
    let public_of = |key: &str, version: u32| GetPublicKeyRequest {
        key_name: key.into(),
        key_version: version,
    };

    // Messages and digests; ring checks every signature with the public key.
    let digest256 = Hash::Sha256.digest(&message);
    for (key, scheme, data, prehashed) in [
        ("ca", "ecdsa-sha256", &message[..], false),
        ("ca", "ecdsa-sha256", &digest256[..], true),
        ("signer", "rsa-pss-sha256", &message[..], false),
        ("signer", "rsa-pss-sha256", &digest256[..], true),
        ("signer", "rsa-pkcs1-sha256", &message[..], false),
        ("ed", "ed25519", &message[..], false),
    ] {
        let reply = c.get_public_key(public_of(key, 0)).await.unwrap().into_inner();
        let public = PublicKey::from_spki_der(&reply.spki_der).unwrap();
        let signed = c
            .sign(sign(key, scheme, data, prehashed))
            .await
            .unwrap_or_else(|s| panic!("{key} {scheme}: {s:?}"))
            .into_inner();
        assert_eq!((signed.key_version, signed.scheme.as_str()), (1, scheme));
        let valid = c
            .verify(verify(key, 0, scheme, data, prehashed, &signed.signature))
            .await
            .unwrap()
            .into_inner()
            .valid;
        assert!(valid, "{key} {scheme} prehashed={prehashed}");
        let mut changed = signed.signature.clone();
        *changed.last_mut().unwrap() ^= 1;
        let valid = c
            .verify(verify(key, 0, scheme, data, prehashed, &changed))
            .await
            .unwrap()
            .into_inner()
            .valid;
        assert!(!valid, "{key} {scheme}: a changed signature verified");
        let parsed = SignScheme::parse(scheme).unwrap();
        assert_eq!(
            public.verify(parsed, SignInput::Message(&message), &signed.signature),
            Ok(true),
            "{key} {scheme} prehashed={prehashed}"
        );
    }

    // Ed25519 signs messages only; an encryption pair does not sign.
    let status = c.sign(sign("ed", "ed25519", &digest256, true)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = c.sign(sign("oaep", "", &message, false)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("RSA-OAEP encryption key pair"),
        "{status:?}"
    );

    // RSA-OAEP: raw blocks, randomised; a changed one does not open.
    grpc_oaep_round_trip(&mut c, "oaep", Some(256)).await;

    // Rotation: version 2 pins the upstream's version 2; version 1 still
    // verifies what it signed, with its own public key.
    grpc_rotation_keeps_version_1(&mut c, "ca", SignScheme::Ecdsa(Hash::Sha256), &message).await;
    drop(c);
    daemon.terminate();
}

/// The KMIP backend's RSA key pairs through the gRPC door, on a real
/// PyKMIP server over mutual TLS: `sealbroker keygen` makes an AES sealing
/// key and an RSA-3072 signing pair (CreateKeyPair, both halves activated);
/// the pair signs whole messages with PKCS#1 v1.5 on the server, and its
/// public key (KMIP Get) verifies them under ring; PSS and digests are
/// refused with InvalidArgument, since a KMIP server picks its own PSS salt
/// and PyKMIP signs messages only; rotation makes a second pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmip_key_pairs_sign_and_verify_through_the_grpc_door_on_pykmip() {
    use sealbroker_core::{Hash, SignScheme};
    use sealbroker_proto::sealbroker::v1::*;
    use sealbroker_testkit::pki::{Leaf, TestCa};
    use sealbroker_testkit::pykmip::{PyKmip, ServerFiles};
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("kmip e2e CA");
    let ca_pem = ca.write(&dir.path().join("ca.pem"));
    let server = ca
        .issue(&Leaf::server(&["127.0.0.1"]).common_name("pykmip e2e server"))
        .write(dir.path(), "server");
    let client = ca
        .issue(&Leaf::client("sealbroker-e2e"))
        .write(dir.path(), "client");
    let state = dir.path().join("pykmip");
    let tls = ServerFiles {
        cert: server.cert,
        key: server.key,
        client_ca: ca_pem.clone(),
    };
    let pykmip = PyKmip::start(&tls, &state, free_port());

    let socket = dir.path().join("sb.sock");
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{socket}\"\nstate_dir = \"{state}\"\n{audit}\
         [backends.kmip]\ntype = \"kmip\"\nendpoint = \"{endpoint}\"\nclient_cert = \"{cert}\"\n\
         client_key = \"{key}\"\nca_cert = \"{ca}\"\n\
         [keys.unseal]\nbackend = \"kmip\"\nkey_name = \"unseal\"\nencrypt_alg = \"AES_CBC_PAD\"\n\
         [keys.signer]\nbackend = \"kmip\"\nkey_name = \"signer\"\nalgorithm = \"rsa-3072\"\n",
        socket = socket.display(),
        state = dir.path().join("state").display(),
        audit = audit_toml(dir.path(), "unseal"),
        endpoint = pykmip.endpoint(),
        cert = client.cert.display(),
        key = client.key.display(),
        ca = ca_pem.display(),
    );
    let config = dir.path().join("daemon.toml");
    fs::write(&config, text).unwrap();
    for key in ["unseal", "signer"] {
        let out = run_cli(
            &["keygen", "--config", config.to_str().unwrap(), "--key", key],
            b"",
            &[],
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "keygen {key}: {said}\n{}", pykmip.logs());
    }

    let daemon = Daemon::serve(&config, None, &dir.path().join("daemon.log")).await;
    let mut c = daemon.unix_client().await;
    grpc_wrap_round_trip(&mut c, "unseal").await;
    let message = b"a tbsCertificate, signed over KMIP";
    for scheme in ["rsa-pkcs1-sha256", "rsa-pkcs1-sha512"] {
        grpc_sign_round_trip(&mut c, "signer", scheme, message, false).await;
    }
    let public = c
        .get_public_key(GetPublicKeyRequest {
            key_name: "signer".into(),
            key_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(public.algorithm, "rsa-3072");

    let sign = |scheme: &str, data: Vec<u8>, prehashed: bool| SignRequest {
        key_name: "signer".into(),
        key_version: 0,
        data,
        prehashed,
        scheme: scheme.into(),
    };
    let status = c
        .sign(sign("rsa-pss-sha256", message.to_vec(), false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("PSS salt length"), "{status:?}");
    let status = c
        .sign(sign("rsa-pkcs1-sha256", Hash::Sha256.digest(message), true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("not a digest"), "{status:?}");

    grpc_rotation_keeps_version_1(&mut c, "signer", SignScheme::RsaPkcs1v15(Hash::Sha256), message).await;
    drop(c);
    daemon.terminate();
}

/// A Development daemon on the Cloud KMS stand-in (over TLS, trusting the
/// stand-in's CA through `SSL_CERT_FILE`): the sealing key `unseal`, and the
/// key pairs `ca` (ECDSA P-384), `signer` (RSA-2048), `ed` (Ed25519) and
/// `oaep` (an RSA-2048 encryption pair) made by `sealbroker keygen`, and
/// `pss` (RSA-2048 PSS) made in the stand-in as gcloud would.
fn gcp_daemon_config(dir: &Path, fake: &fake_gcp::FakeKms, ca: &Path, socket: &Path) -> PathBuf {
    let credentials = dir.join("gcp-credentials.json");
    let json = serde_json::json!({
        "type": "authorized_user",
        "client_id": fake_gcp::CLIENT_ID,
        "client_secret": fake_gcp::CLIENT_SECRET,
        "refresh_token": fake_gcp::REFRESH_TOKEN,
        "token_uri": format!("{}/token", fake.endpoint),
    });
    fs::write(&credentials, json.to_string()).unwrap();
    let ring = fake_gcp::KEY.rsplit_once('/').unwrap().0;
    fake.add_asymmetric("pss", "RSA_SIGN_PSS_2048_SHA256");
    let key = |name: &str, rest: &str| {
        let id = if name == "unseal" { "unseal" } else { name };
        format!("[keys.{name}]\nbackend = \"gcp\"\nkey_name = \"{ring}/{id}\"\n{rest}")
    };
    let pair = |algorithm: &str| format!("key_version = \"1\"\nalgorithm = \"{algorithm}\"\n");
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{socket}\"\nstate_dir = \"{state}\"\n{audit}\
         [backends.gcp]\ntype = \"gcpckms\"\nendpoint = \"{endpoint}\"\ncredentials_file = \"{credentials}\"\n\
         {unseal}{ca}{signer}{ed}{pss}{oaep}",
        socket = socket.display(),
        state = dir.join("state").display(),
        audit = audit_toml(dir, "unseal"),
        endpoint = fake.endpoint,
        credentials = credentials.display(),
        unseal = key("unseal", ""),
        ca = key("ca", &pair("ecdsa-p384")),
        signer = key("signer", &pair("rsa-2048")),
        ed = key("ed", &pair("ed25519")),
        pss = key("pss", &pair("rsa-2048")),
        oaep = key(
            "oaep",
            &format!("{}mechanism = \"RSA_PKCS_OAEP\"\n", pair("rsa-2048"))
        ),
    );
    let path = dir.join("daemon.toml");
    fs::write(&path, text).unwrap();
    for (key, algorithm) in [
        ("ca", "EC_SIGN_P384_SHA384"),
        ("signer", "RSA_SIGN_PKCS1_2048_SHA256"),
        ("ed", "EC_SIGN_ED25519"),
        ("oaep", "RSA_DECRYPT_OAEP_2048_SHA256"),
    ] {
        let out = run_cli(
            &["keygen", "--config", path.to_str().unwrap(), "--key", key],
            b"",
            &[("SSL_CERT_FILE", ca)],
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "keygen {key}: {said}");
        assert!(
            said.contains(algorithm) && said.contains("HSM") && said.contains("never exportable"),
            "keygen {key}: {said}"
        );
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_kms_keys_sign_verify_and_decrypt_through_the_grpc_door_on_the_stand_in() {
    use sealbroker_core::{Hash, PublicKey, SignInput, SignScheme};
    use sealbroker_proto::sealbroker::v1::*;
    use tonic::Code;

    sweep::secret(fake_gcp::REFRESH_TOKEN);
    sweep::secret(fake_gcp::CLIENT_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = fake_gcp::pki(dir.path());
    let fake = fake_gcp::start_fake(tls).await;
    let socket = dir.path().join("sb.sock");
    let config = {
        let (dir, ca, socket) = (dir.path().to_owned(), ca.clone(), socket.clone());
        // keygen runs the CLI, which blocks; the stand-in serves meanwhile.
        let fake = &fake;
        tokio::task::block_in_place(|| gcp_daemon_config(&dir, fake, &ca, &socket))
    };
    let daemon = Daemon::start(
        &["serve", "--config", config.to_str().unwrap()],
        &[("SSL_CERT_FILE", ca.as_path())],
        &dir.path().join("daemon.log"),
        Some(socket.clone()),
        None,
    )
    .await;
    let mut c = daemon.unix_client().await;
    let message = b"release manifest v1.2.3".to_vec();
    let public_key = |reply: GetPublicKeyResponse| {
        let public = PublicKey::from_spki_der(&reply.spki_der).unwrap();
        assert_eq!(public.algorithm.as_str(), reply.algorithm);
        assert_eq!(public.pem(), reply.pem);
        public
    };
    let sign = |key: &str, scheme: &str, data: &[u8], prehashed: bool| SignRequest {
        key_name: key.into(),
        key_version: 0,
        data: data.to_vec(),
        prehashed,
        scheme: scheme.into(),
    };
    let verify = |key: &str, version: u32, scheme: &str, signature: &[u8]| VerifyRequest {
        key_name: key.into(),
        key_version: version,
        data: message.clone(),
        prehashed: false,
        scheme: scheme.into(),
        signature: signature.to_vec(),
    };

    for (key, scheme, default) in [
        ("ca", "", "ecdsa-sha384"),
        ("signer", "", "rsa-pkcs1-sha256"),
        ("ed", "", "ed25519"),
        ("pss", "rsa-pss-sha256", "rsa-pss-sha256"),
    ] {
        let public = public_key(
            c.get_public_key(GetPublicKeyRequest {
                key_name: key.into(),
                key_version: 0,
            })
            .await
            .unwrap()
            .into_inner(),
        );
        let parsed = SignScheme::parse(default).unwrap();
        let mut signatures = vec![
            c.sign(sign(key, scheme, &message, false))
                .await
                .unwrap()
                .into_inner(),
        ];
        // Digest mode: the caller's digest is signed as is.
        if let Some(hash) = parsed.hash() {
            let digest = hash.digest(&message);
            signatures.push(
                c.sign(sign(key, scheme, &digest, true))
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        for signed in signatures {
            assert_eq!((signed.key_version, signed.scheme.as_str()), (1, default));
            let valid = |reply: VerifyResponse| reply.valid;
            assert!(valid(
                c.verify(verify(key, 0, scheme, &signed.signature))
                    .await
                    .unwrap()
                    .into_inner()
            ));
            let mut changed = signed.signature.clone();
            *changed.last_mut().unwrap() ^= 1;
            assert!(!valid(
                c.verify(verify(key, 0, scheme, &changed))
                    .await
                    .unwrap()
                    .into_inner()
            ));
            // The signature is real: ring checks it with the public key alone.
            assert_eq!(
                public.verify(parsed, SignInput::Message(&message), &signed.signature),
                Ok(true),
                "{key} {default}"
            );
        }
    }

    // Refusals: a scheme other than the version's own, a digest for
    // Ed25519, a digest to verify (Cloud KMS has no Verify), a key that
    // does not sign.
    let digest = Hash::Sha256.digest(&message);
    for (request, says) in [
        (sign("pss", "", &message, false), "only as rsa-pss-sha256"),
        (
            sign("signer", "rsa-pss-sha256", &message, false),
            "only as rsa-pkcs1-sha256",
        ),
        (sign("ed", "", &digest, true), "Ed25519 signs the message itself"),
        (sign("oaep", "", &message, false), "does not sign"),
    ] {
        let status = c.sign(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{}: {status:?}",
            request.key_name
        );
        assert!(
            status.message().contains(says),
            "{}: {status:?}",
            request.key_name
        );
    }
    let status = c
        .verify(VerifyRequest {
            data: digest.clone(),
            prehashed: true,
            ..verify("signer", 0, "", &[1; 256])
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("whole message"), "{status:?}");

    // RSA-OAEP on the encryption pair; a changed ciphertext does not open.
    grpc_oaep_round_trip(&mut c, "oaep", Some(256)).await;

    // The symmetric key seals as before.
    grpc_wrap_round_trip(&mut c, "unseal").await;

    // Rotation: version 2 of the signer is a new Cloud KMS version of the
    // same algorithm; version 1 still verifies what it signed.
    grpc_rotation_keeps_version_1(
        &mut c,
        "signer",
        SignScheme::RsaPkcs1v15(sealbroker_core::Hash::Sha256),
        &message,
    )
    .await;

    let logs = daemon.logs();
    daemon.terminate();
    for secret in [fake_gcp::REFRESH_TOKEN, fake_gcp::CLIENT_SECRET, "4111 1111"] {
        assert!(!logs.contains(secret), "{secret:?} reached the daemon's log");
    }
    let audit: Vec<serde_json::Value> = fs::read_to_string(audit_log(dir.path()))
        .unwrap()
        .lines()
        .map(json)
        .collect();
    let count = |key: &str, operation: &str, outcome: &str| {
        audit
            .iter()
            .filter(|l| l["key"] == key && l["operation"] == operation && l["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("signer", "sign", "ok"), 4, "{audit:#?}");
    assert_eq!(count("oaep", "decrypt", "ok"), 2, "{audit:#?}");
    assert_eq!(count("oaep", "decrypt", "FailedPrecondition"), 1, "{audit:#?}");
}

/// A Development daemon on the Key Vault stand-in (reached at 127.0.0.1,
/// trusting its CA through `ca_file`): the sealing key `unseal`, and the key
/// pairs `ca` (ECDSA P-256), `signer` (RSA-2048) and `oaep` (an RSA-2048
/// encryption pair) made by `sealbroker keygen`.
fn azure_daemon_config(dir: &Path, fake: &azure_standin::FakeVault, ca: &Path, socket: &Path) -> PathBuf {
    let secret = dir.join("azure-client-secret");
    fs::write(&secret, azure_standin::CLIENT_SECRET).unwrap();
    let key =
        |name: &str, rest: &str| format!("[keys.{name}]\nbackend = \"azure\"\nkey_name = \"{name}\"\n{rest}");
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{socket}\"\nstate_dir = \"{state}\"\n{audit}\
         [backends.azure]\ntype = \"azurekeyvault\"\nvault_url = \"{vault}\"\nvault_address = \"127.0.0.1\"\n\
         ca_file = \"{ca}\"\ncredential = \"client_secret\"\ntenant_id = \"{tenant}\"\nclient_id = \"{client}\"\n\
         client_secret_file = \"{secret}\"\nauthority_host = \"{authority}\"\n{unseal}{pki}{signer}{oaep}",
        socket = socket.display(),
        state = dir.join("state").display(),
        audit = audit_toml(dir, "unseal"),
        vault = fake.vault_url,
        ca = ca.display(),
        tenant = azure_standin::TENANT,
        client = azure_standin::CLIENT_ID,
        secret = secret.display(),
        authority = fake.authority,
        unseal = key("unseal", ""),
        pki = key("ca", "algorithm = \"ecdsa-p256\"\n"),
        signer = key("signer", "algorithm = \"rsa-2048\"\n"),
        oaep = key(
            "oaep",
            "algorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"\n"
        ),
    );
    let path = dir.join("daemon.toml");
    fs::write(&path, &text).unwrap();
    // keygen names the version Key Vault made; the config then pins it.
    let mut pinned = text.clone();
    for (key, kty) in [("ca", "EC-HSM"), ("signer", "RSA-HSM"), ("oaep", "RSA-HSM")] {
        let out = run_cli(
            &["keygen", "--config", path.to_str().unwrap(), "--key", key],
            b"",
            &[],
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "keygen {key}: {said}");
        assert!(
            said.contains(kty) && said.contains("never exportable"),
            "keygen {key}: {said}"
        );
        let version = said
            .split("set key_version = \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("keygen {key} names no version: {said}"));
        assert_eq!(version, fake.pair_version(key, 1));
        let table = format!("[keys.{key}]\n");
        pinned = pinned.replace(&table, &format!("{table}key_version = \"{version}\"\n"));
    }
    fs::write(&path, pinned).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_key_vault_keys_sign_verify_and_decrypt_through_the_grpc_door_on_the_stand_in() {
    use sealbroker_core::{PublicKey, SignInput, SignScheme};
    use sealbroker_proto::sealbroker::v1::*;
    use tonic::Code;

    sweep::secret(azure_standin::CLIENT_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = azure_standin::pki(dir.path());
    let fake = azure_standin::start_fake(tls).await;
    let socket = dir.path().join("sb.sock");
    let config = {
        let (dir, ca, socket) = (dir.path().to_owned(), ca.clone(), socket.clone());
        let fake = &fake;
        // keygen runs the CLI, which blocks; the stand-in serves meanwhile.
        tokio::task::block_in_place(|| azure_daemon_config(&dir, fake, &ca, &socket))
    };
    let daemon = Daemon::serve(&config, None, &dir.path().join("daemon.log")).await;
    let mut c = daemon.unix_client().await;
    let message = b"release manifest v1.2.3".to_vec();
    let public_key = |reply: GetPublicKeyResponse| {
        let public = PublicKey::from_spki_der(&reply.spki_der).unwrap();
        assert_eq!(public.algorithm.as_str(), reply.algorithm);
        assert_eq!(public.pem(), reply.pem);
        public
    };
    let sign = |key: &str, scheme: &str, data: &[u8], prehashed: bool| SignRequest {
        key_name: key.into(),
        key_version: 0,
        data: data.to_vec(),
        prehashed,
        scheme: scheme.into(),
    };
    let verify = |key: &str, version: u32, scheme: &str, data: &[u8], prehashed: bool, signature: &[u8]| {
        VerifyRequest {
            key_name: key.into(),
            key_version: version,
            data: data.to_vec(),
            prehashed,
            scheme: scheme.into(),
            signature: signature.to_vec(),
        }
    };

    for (key, scheme, default) in [
        ("ca", "", "ecdsa-sha256"),
        ("signer", "", "rsa-pkcs1-sha256"),
        ("signer", "rsa-pss-sha384", "rsa-pss-sha384"),
    ] {
        let public = public_key(
            c.get_public_key(GetPublicKeyRequest {
                key_name: key.into(),
                key_version: 0,
            })
            .await
            .unwrap()
            .into_inner(),
        );
        let parsed = SignScheme::parse(default).unwrap();
        let digest = parsed.hash().unwrap().digest(&message);
        for (data, prehashed) in [(&message, false), (&digest, true)] {
            let signed = c
                .sign(sign(key, scheme, data, prehashed))
                .await
                .unwrap()
                .into_inner();
            assert_eq!((signed.key_version, signed.scheme.as_str()), (1, default));
            let valid = |reply: VerifyResponse| reply.valid;
            assert!(valid(
                c.verify(verify(key, 0, scheme, data, prehashed, &signed.signature))
                    .await
                    .unwrap()
                    .into_inner()
            ));
            let mut changed = signed.signature.clone();
            *changed.last_mut().unwrap() ^= 1;
            assert!(!valid(
                c.verify(verify(key, 0, scheme, data, prehashed, &changed))
                    .await
                    .unwrap()
                    .into_inner()
            ));
            // The signature is real: ring checks it with the public key alone.
            assert_eq!(
                public.verify(parsed, SignInput::Message(&message), &signed.signature),
                Ok(true),
                "{key} {default} prehashed={prehashed}"
            );
        }
    }

    for (request, says) in [
        (
            sign("ca", "ecdsa-sha384", &message, false),
            "only as ecdsa-sha256",
        ),
        (
            sign("ca", "rsa-pss-sha256", &message, false),
            "cannot sign with rsa-pss-sha256",
        ),
        (sign("oaep", "", &message, false), "does not sign"),
    ] {
        let status = c.sign(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{}: {status:?}",
            request.key_name
        );
        assert!(
            status.message().contains(says),
            "{}: {status:?}",
            request.key_name
        );
    }

    grpc_oaep_round_trip(&mut c, "oaep", None).await;

    grpc_wrap_round_trip(&mut c, "unseal").await;

    // Rotation: version 2 of the signer is a new version (a new pair) in
    // Key Vault; version 1 still verifies what it signed.
    grpc_rotation_keeps_version_1(
        &mut c,
        "signer",
        SignScheme::RsaPkcs1v15(sealbroker_core::Hash::Sha256),
        &message,
    )
    .await;

    let logs = daemon.logs();
    daemon.terminate();
    for secret in [azure_standin::CLIENT_SECRET, "4111 1111"] {
        assert!(!logs.contains(secret), "{secret:?} reached the daemon's log");
    }
    let audit: Vec<serde_json::Value> = fs::read_to_string(audit_log(dir.path()))
        .unwrap()
        .lines()
        .map(json)
        .collect();
    let count = |key: &str, operation: &str, outcome: &str| {
        audit
            .iter()
            .filter(|l| l["key"] == key && l["operation"] == operation && l["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("signer", "sign", "ok"), 6, "{audit:#?}");
    assert_eq!(count("oaep", "decrypt", "ok"), 2, "{audit:#?}");
    assert_eq!(count("oaep", "decrypt", "FailedPrecondition"), 1, "{audit:#?}");
}

/// Native gRPC Sign, Verify and GetPublicKey on `key` with `scheme`, on
/// `message` or (`prehashed`) its digest under the scheme's hash: the
/// signature verifies through the door and, with the public key alone,
/// under ring; a changed one verifies under neither.
async fn grpc_sign_round_trip(
    c: &mut sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient<
        tonic::transport::Channel,
    >,
    key: &str,
    scheme: &str,
    message: &[u8],
    prehashed: bool,
) {
    use sealbroker_core::{PublicKey, SignInput, SignScheme};
    use sealbroker_proto::sealbroker::v1::*;

    let parsed = SignScheme::parse(scheme).unwrap();
    let data = if prehashed {
        parsed.hash().unwrap().digest(message)
    } else {
        message.to_vec()
    };

    let public = c
        .get_public_key(GetPublicKeyRequest {
            key_name: key.into(),
            key_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let public = PublicKey::from_spki_der(&public.spki_der).unwrap();
    let signed = c
        .sign(SignRequest {
            key_name: key.into(),
            key_version: 0,
            data: data.clone(),
            prehashed,
            scheme: scheme.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("{key} {scheme}: {s:?}"))
        .into_inner();
    assert_eq!(signed.scheme, scheme, "{key}");
    let verify = |signature: &[u8]| VerifyRequest {
        key_name: key.into(),
        key_version: 0,
        data: data.clone(),
        prehashed,
        scheme: scheme.into(),
        signature: signature.to_vec(),
    };
    assert!(
        c.verify(verify(&signed.signature))
            .await
            .unwrap()
            .into_inner()
            .valid,
        "{key} {scheme}"
    );
    let mut changed = signed.signature.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 1;
    assert!(
        !c.verify(verify(&changed)).await.unwrap().into_inner().valid,
        "{key} {scheme}"
    );
    // ring checks whole messages: a digest's signature is over the message.
    let input = SignInput::Message(message);
    assert_eq!(
        public.verify(parsed, input, &signed.signature),
        Ok(true),
        "{key} {scheme}"
    );
    assert_eq!(
        public.verify(parsed, input, &changed),
        Ok(false),
        "{key} {scheme}"
    );
}

/// The native gRPC door's Sign and Verify on the PKCS#11 backend (SoftHSM2,
/// a Hardened daemon; messages and digests) and on the software backend (a
/// Development daemon; messages only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_and_software_keys_sign_and_verify_through_the_grpc_door() {
    let message = b"a tbsCertificate, say".to_vec();
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "extkeys", "unseal-key", PIN);
    let socket = dir.path().join("sb.sock");
    let config = daemon_config(dir.path(), &token, &socket);
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("daemon.log")).await;
    let mut c = daemon.unix_client().await;
    for (key, scheme, prehashed) in [
        ("pki-root", "ecdsa-sha256", false),
        ("pki-root", "ecdsa-sha256", true),
        ("signer", "rsa-pss-sha256", false),
        ("signer", "rsa-pkcs1-sha384", true),
    ] {
        grpc_sign_round_trip(&mut c, key, scheme, &message, prehashed).await;
    }
    drop(c);
    daemon.terminate();

    let dev = tempfile::tempdir().unwrap();
    let socket = dev.path().join("sb.sock");
    let key_file = |name: &str| dev.path().join(format!("{name}.pk8"));
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{socket}\"\nstate_dir = \"{state}\"\n{audit}\
         [backends.soft]\ntype = \"software\"\n\
         [keys.unseal]\nbackend = \"soft\"\nkey_file = \"{unseal}\"\ngenerate = true\n\
         [keys.p384]\nbackend = \"soft\"\nkey_file = \"{p384}\"\ngenerate = true\nalgorithm = \"ecdsa-p384\"\n\
         [keys.ed]\nbackend = \"soft\"\nkey_file = \"{ed}\"\ngenerate = true\nalgorithm = \"ed25519\"\n",
        socket = socket.display(),
        state = dev.path().join("state").display(),
        audit = audit_toml(dev.path(), "unseal"),
        unseal = dev.path().join("unseal.key").display(),
        p384 = key_file("p384").display(),
        ed = key_file("ed").display(),
    );
    let config = dev.path().join("daemon.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::serve(&config, None, &dev.path().join("daemon.log")).await;
    let mut c = daemon.unix_client().await;
    grpc_sign_round_trip(&mut c, "p384", "ecdsa-sha384", &message, false).await;
    grpc_sign_round_trip(&mut c, "ed", "ed25519", &message, false).await;
    drop(c);
    daemon.terminate();
}

/// RSA-OAEP through the gRPC door on the encryption pair `key`: two
/// encryptions of one secret differ (and are `block_len` bytes, when
/// given), both open to the secret, and a changed one does not open
/// (`FAILED_PRECONDITION`).
async fn grpc_oaep_round_trip(
    c: &mut sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient<
        tonic::transport::Channel,
    >,
    key: &str,
    block_len: Option<usize>,
) {
    use sealbroker_proto::sealbroker::v1::*;

    let secret = b"card 4111 1111 1111 1111".to_vec();
    let encrypt = EncryptAsymmetricRequest {
        key_name: key.into(),
        key_version: 0,
        plaintext: secret.clone(),
    };
    let first = c.encrypt_asymmetric(encrypt.clone()).await.unwrap().into_inner();
    let second = c.encrypt_asymmetric(encrypt).await.unwrap().into_inner();
    assert_ne!(first.ciphertext, second.ciphertext, "{key}: OAEP is randomised");
    assert!(
        !first.ciphertext.windows(secret.len()).any(|w| w == secret),
        "{key}: the ciphertext holds the secret"
    );
    if let Some(len) = block_len {
        assert_eq!(first.ciphertext.len(), len, "{key}");
    }
    let decrypt = |ciphertext: Vec<u8>| DecryptAsymmetricRequest {
        key_name: key.into(),
        key_version: 0,
        ciphertext,
    };
    for ciphertext in [&first.ciphertext, &second.ciphertext] {
        let opened = c
            .decrypt_asymmetric(decrypt(ciphertext.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(opened.plaintext, secret, "{key}");
    }
    let mut changed = first.ciphertext.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 1;
    let status = c.decrypt_asymmetric(decrypt(changed)).await.unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::FailedPrecondition,
        "{key}: {status:?}"
    );
}

/// Wrap and Unwrap of a data key through the gRPC door on the sealing key
/// `key`. The plaintext is distinctive: the secret sweep looks for it in
/// every log, where "data key" is ordinary text.
async fn grpc_wrap_round_trip(
    c: &mut sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient<
        tonic::transport::Channel,
    >,
    key: &str,
) {
    use sealbroker_proto::sealbroker::v1::*;

    let wrapped = c
        .wrap(WrapRequest {
            key_name: key.into(),
            plaintext: b"grpc-wrap-dek-5310".to_vec(),
            aad: b"aad".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let opened = c
        .unwrap(UnwrapRequest {
            blob: wrapped.blob,
            aad: b"aad".to_vec(),
            key_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, b"grpc-wrap-dek-5310", "{key}");
}

/// Rotation through the gRPC door of the key pair `key`, whose default
/// scheme is `scheme`: version 2 is a new key pair that signs from then on;
/// version 1's public key does not verify it, and version 1 still verifies
/// what it signed before.
async fn grpc_rotation_keeps_version_1(
    c: &mut sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient<
        tonic::transport::Channel,
    >,
    key: &str,
    scheme: sealbroker_core::SignScheme,
    message: &[u8],
) {
    use sealbroker_core::{PublicKey, SignInput};
    use sealbroker_proto::sealbroker::v1::*;

    let sign = || SignRequest {
        key_name: key.into(),
        key_version: 0,
        data: message.to_vec(),
        prehashed: false,
        scheme: String::new(),
    };
    let before = c.sign(sign()).await.unwrap().into_inner();
    let rotated = c
        .rotate_key(RotateKeyRequest {
            key_name: key.into(),
            stage: false,
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(rotated.primary_version, 2, "{key}");
    let after = c.sign(sign()).await.unwrap().into_inner();
    assert_eq!(after.key_version, 2, "{key}");
    let mut public_of = async |version: u32| {
        let reply = c
            .get_public_key(GetPublicKeyRequest {
                key_name: key.into(),
                key_version: version,
            })
            .await
            .unwrap()
            .into_inner();
        PublicKey::from_spki_der(&reply.spki_der).unwrap()
    };
    let v1 = public_of(1).await;
    let v2 = public_of(2).await;
    assert_ne!(v1, v2, "{key}: version 2 is a new key pair");
    let input = SignInput::Message(message);
    assert_eq!(v2.verify(scheme, input, &after.signature), Ok(true), "{key}");
    assert_eq!(v1.verify(scheme, input, &after.signature), Ok(false), "{key}");
    let valid = c
        .verify(VerifyRequest {
            key_name: key.into(),
            key_version: 1,
            data: message.to_vec(),
            prehashed: false,
            scheme: String::new(),
            signature: before.signature,
        })
        .await
        .unwrap()
        .into_inner()
        .valid;
    assert!(valid, "{key}: version 1 no longer verifies what it signed");
    let valid = c
        .verify(VerifyRequest {
            key_name: key.into(),
            key_version: 1,
            data: message.to_vec(),
            prehashed: false,
            scheme: String::new(),
            signature: after.signature,
        })
        .await
        .unwrap()
        .into_inner()
        .valid;
    assert!(!valid, "{key}: version 1 verifies what version 2 signed");
}
