//! Ship it (#24): the images `images/build.sh` makes are pushed with skopeo
//! to a real registry (`docker-registry`, the CNCF distribution registry, on
//! 127.0.0.1), and the real OpenBao 2.7.2 downloads the KMS plugin image from
//! it by digest, auto-unseals through it on SoftHSM, and refuses the image
//! once its layer is tampered with.
//!
//! The images are `$SEALBROKER_IMAGES_DIR` (tests/run.sh builds them from
//! the release binaries in images/check.sh), else built here from the debug
//! binaries under test.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sealbroker_e2e::openbao::{BaoConfig, OpenBao, bao_server_until_exit};
use sealbroker_e2e::*;

const PIN: &str = "images-e2e-pin-6143";
const SECRET: &str = "kv-secret-from-an-oci-plugin";

/// An OCI layout (`layout/`) with the tags broker, operator and kms-plugin,
/// and their digests (`digests.env`).
struct Images {
    dir: PathBuf,
    digests: BTreeMap<String, String>,
    _built: Option<tempfile::TempDir>,
}

impl Images {
    fn get() -> Images {
        let (dir, built) = match std::env::var_os("SEALBROKER_IMAGES_DIR") {
            Some(dir) => (PathBuf::from(dir), None),
            None => {
                let tmp = tempfile::tempdir().unwrap();
                let bins = sealbroker_bin().parent().unwrap().to_owned();
                let out = Command::new("bash")
                    .arg(repo_root().join("images/build.sh"))
                    .arg(&bins)
                    .arg(tmp.path())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "images/build.sh {} failed: {}",
                    bins.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                (tmp.path().to_owned(), Some(tmp))
            }
        };
        let env = dir.join("digests.env");
        let text = fs::read_to_string(&env).unwrap_or_else(|e| panic!("cannot read {}: {e}", env.display()));
        let digests = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Images {
            dir,
            digests,
            _built: built,
        }
    }

    fn digest(&self, key: &str) -> &str {
        self.digests
            .get(key)
            .unwrap_or_else(|| panic!("digests.env has no {key}: {:?}", self.digests))
    }

    fn layout(&self) -> PathBuf {
        self.dir.join("layout")
    }

    /// A blob of the layout, parsed as JSON.
    fn json_blob(&self, digest: &str) -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let path = self.layout().join("blobs/sha256").join(hex);
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap()
    }
}

/// `docker-registry serve` on 127.0.0.1 and a free port, its storage in a
/// private directory; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: not-shared-with-any-other-replica\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry (bash tests/peers/install.sh installs it)");
        let mut registry = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!("docker-registry exited with {status}: {}", registry.log());
            }
            if http_get(port, "/v2/", "").is_some_and(|(status, _, _)| status == 200) {
                return registry;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on 127.0.0.1:{port}: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of the layout's `tag` to `repo:dest_tag`; returns the
    /// digest skopeo pushed (digests preserved or the copy fails).
    fn push(&self, layout: &Path, tag: &str, repo: &str, dest_tag: &str) -> String {
        let digest_file = self.dir.path().join(format!("{repo}-{dest_tag}.digest"));
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{dest_tag}", self.host()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy {tag} to {repo}:{dest_tag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::read_to_string(&digest_file).unwrap().trim().to_owned()
    }

    /// Where the registry keeps a blob's bytes.
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port`: (status, headers, body), or
/// None when nothing answers.
fn http_get(port: u16, path: &str, accept: &str) -> Option<(u16, String, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let accept = if accept.is_empty() {
        String::new()
    } else {
        format!("Accept: {accept}\r\n")
    };
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{accept}\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head, response[split + 4..].to_vec()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn the_registry_receives_every_image_with_the_digest_the_build_made() {
    let images = Images::get();
    let registry = Registry::start();
    for (tag, repo, key) in [
        ("broker", "sealbroker", "SEALBROKER_IMAGE_DIGEST"),
        (
            "operator",
            "sealbroker-operator",
            "SEALBROKER_OPERATOR_IMAGE_DIGEST",
        ),
        (
            "kms-plugin",
            "sealbroker-kms-plugin",
            "SEALBROKER_KMS_PLUGIN_IMAGE_DIGEST",
        ),
    ] {
        let built = images.digest(key);
        assert_eq!(registry.push(&images.layout(), tag, repo, "ci"), built, "{tag}");
        // What a puller gets by tag is the built manifest, byte for byte.
        let (status, head, body) =
            http_get(registry.port, &format!("/v2/{repo}/manifests/ci"), OCI_MANIFEST).unwrap();
        assert_eq!(status, 200, "{head}");
        assert_eq!(format!("sha256:{}", sha256_hex(&body)), built, "{tag}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("docker-content-digest: {built}")),
            "{head}"
        );
    }
}

#[test]
fn images_run_as_non_root_with_no_shell_and_the_plugin_sits_where_openbao_looks() {
    let images = Images::get();
    for (key, entrypoint) in [
        ("SEALBROKER_IMAGE_DIGEST", "/usr/local/bin/sealbroker"),
        (
            "SEALBROKER_OPERATOR_IMAGE_DIGEST",
            "/usr/local/bin/sealbroker-operator",
        ),
        ("SEALBROKER_KMS_PLUGIN_IMAGE_DIGEST", "/sealbroker"),
    ] {
        let manifest = images.json_blob(images.digest(key));
        let config = images.json_blob(manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["config"]["User"], "65532:65532", "{key}: {config}");
        assert_eq!(config["config"]["Entrypoint"][0], entrypoint, "{key}: {config}");
        assert_eq!(config["architecture"], "amd64");
        let mut names = Vec::new();
        for layer in manifest["layers"].as_array().unwrap() {
            let hex = layer["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
            let out = Command::new("tar")
                .arg("-tzf")
                .arg(images.layout().join("blobs/sha256").join(hex))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            names.extend(String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned));
        }
        for shell in [
            "bin/sh",
            "usr/bin/sh",
            "bin/bash",
            "usr/bin/bash",
            "bin/busybox",
            "usr/bin/busybox",
        ] {
            assert!(!names.iter().any(|n| n == shell), "{key} carries {shell}");
        }
        // OpenBao's downloader takes the entry named exactly as the
        // entrypoint without its "/": no "./" prefix.
        let file = entrypoint.trim_start_matches('/');
        assert!(names.iter().any(|n| n == file), "{key}: no {file} in {names:?}");
    }
}

/// A hardened broker config for the plugin: one SoftHSM key `unseal`, and
/// the keyed audit trail Hardened requires.
fn plugin_broker_config(dir: &Path, token: &SoftHsmToken) -> PathBuf {
    let path = dir.join("plugin.toml");
    fs::write(
        &path,
        format!(
            "profile = \"hardened\"\n{}\n{}\n[keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{}",
            sealbroker_testkit::audit_toml(dir, "unseal"),
            token.backend_toml("hsm"),
            allow_test_callers()
        ),
    )
    .unwrap();
    path
}

/// OpenBao's config: raft, the plugin downloaded from `image` (pinned by
/// digest) and checked against `sha256sum`, and the seal through it.
fn oci_plugin_config(dir: &Path, image: &str, sha256sum: &str, broker: &Path) -> BaoConfig {
    let port = free_port();
    let plugins = dir.join("plugins");
    fs::create_dir_all(&plugins).unwrap();
    let text = format!(
        r#"{base}plugin_directory     = "{plugins}"
plugin_auto_download = true
plugin "kms" "sealbroker" {{
  image     = "{image}"
  version   = "v1"
  args      = ["kms-plugin"]
  sha256sum = "{sha256sum}"
}}
seal "sealbroker" {{
  config_file = "{broker}"
  key_name    = "unseal"
}}
"#,
        base = BaoConfig::storage_and_listener(dir, port, free_port()),
        plugins = plugins.display(),
        broker = broker.display(),
    );
    let path = dir.join("bao.hcl");
    fs::write(&path, text).unwrap();
    BaoConfig {
        dir: dir.to_owned(),
        port,
        path,
    }
}

#[test]
fn openbao_downloads_the_plugin_image_by_digest_and_auto_unseals_through_it() {
    let images = Images::get();
    let registry = Registry::start();
    let digest = images.digest("SEALBROKER_KMS_PLUGIN_IMAGE_DIGEST").to_owned();
    registry.push(&images.layout(), "kms-plugin", "sealbroker-kms-plugin", "v1");
    let image = format!("{}/sealbroker-kms-plugin@{digest}", registry.host());

    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let broker = plugin_broker_config(dir.path(), &token);
    let sha = images.digest("SEALBROKER_PLUGIN_SHA256").to_owned();
    let config = oci_plugin_config(dir.path(), &image, &sha, &broker);
    let env = [("SOFTHSM2_CONF", token.conf.as_path())];

    let bao = OpenBao::start(&config, &env, "bao-1.log");
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    let logs = bao.logs();
    assert!(
        logs.contains(&format!(
            "downloading plugin from OCI registry: plugin=kms-sealbroker reference={image}"
        )),
        "{logs}"
    );
    // The plugin OpenBao runs is the image's binary, in its OCI cache.
    let link = dir.path().join("plugins/kms-sealbroker-v1");
    let target = fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    assert!(target.to_string_lossy().contains(&digest), "{}", target.display());
    let cached = fs::read(dir.path().join("plugins").join(&target)).unwrap();
    assert_eq!(sha256_hex(&cached), sha);
    bao.stop();

    // Restarted, it unseals through the same plugin.
    let bao = OpenBao::start(&config, &env, "bao-2.log");
    bao.wait_unsealed(Duration::from_secs(30));
    assert_eq!(bao.read_secret(&root), SECRET);
    assert!(!bao.logs().contains(PIN), "the HSM PIN reached OpenBao's log");
    bao.stop();
}

#[test]
fn openbao_refuses_a_plugin_image_whose_layer_was_tampered_with() {
    let images = Images::get();
    let registry = Registry::start();
    let digest = images.digest("SEALBROKER_KMS_PLUGIN_IMAGE_DIGEST").to_owned();
    registry.push(&images.layout(), "kms-plugin", "sealbroker-kms-plugin", "v1");
    // One byte of the layer changed where the registry keeps it: the
    // manifest, and so the digest OpenBao asks for, stay the same.
    let manifest = images.json_blob(&digest);
    let layer = registry.blob_path(manifest["layers"][0]["digest"].as_str().unwrap());
    let mut bytes = fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&layer, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let image = format!("{}/sealbroker-kms-plugin@{digest}", registry.host());
    let sha = images.digest("SEALBROKER_PLUGIN_SHA256");
    let config = oci_plugin_config(dir.path(), &image, sha, Path::new("/nonexistent.toml"));
    let (status, logs) = bao_server_until_exit(&config.dir, &config.path, &[], "a tampered plugin image");
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains("Error downloading plugins") && logs.contains("kms-sealbroker"),
        "{logs}"
    );
    assert!(
        !dir.path().join("plugins/kms-sealbroker-v1").exists(),
        "the tampered binary was installed"
    );
}

/// The peers' Python (it has `cryptography` and `cyclonedx-python-lib`).
fn peers_python() -> PathBuf {
    std::env::var_os("SEALBROKER_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/sealbroker-peers/venv")
        })
        .join("bin/python")
}

/// `images/sign.py` with the peers' Python.
fn sign_py(args: &[&str]) -> String {
    let out = Command::new(peers_python())
        .arg(repo_root().join("images/sign.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "images/sign.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `sealbroker-operator verify-image`: (exit code, stderr).
fn verify_image(key: &Path, registry: &Registry, image: &str) -> (i32, String) {
    let operator = sealbroker_bin().parent().unwrap().join("sealbroker-operator");
    let out = Command::new(&operator)
        .arg("verify-image")
        .arg("--image-trust-key")
        .arg(key)
        .args(["--plain-http-registry", &registry.host(), image])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", operator.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_operator_refuses_an_unsigned_image_and_runs_only_what_the_trusted_key_signed() {
    let images = Images::get();
    let registry = Registry::start();
    let keys = tempfile::tempdir().unwrap();
    let passphrase = keys.path().join("passphrase");
    fs::write(&passphrase, "images-e2e-signing-passphrase-5521").unwrap();
    sweep::secret("images-e2e-signing-passphrase-5521");
    let key = keys.path().join("release");
    let other = keys.path().join("other");
    let pass = passphrase.to_str().unwrap();
    sign_py(&["keygen", key.to_str().unwrap(), pass]);
    sign_py(&["keygen", other.to_str().unwrap(), pass]);
    let trusted = key.with_extension("pub");

    let digest = registry.push(&images.layout(), "broker", "sealbroker", "ci");
    registry.push(&images.layout(), "broker", "sealbroker-unsigned", "ci");
    let signed = format!("{}/sealbroker@{digest}", registry.host());
    let unsigned = format!("{}/sealbroker-unsigned@{digest}", registry.host());

    // Unsigned: refused.
    let (code, why) = verify_image(&trusted, &registry, &signed);
    assert_eq!(code, 1, "{why}");
    assert!(why.contains("is not signed"), "{why}");

    // Signed by the release key: accepted.
    let layout = keys.path().join("signature");
    let reference = format!("{}/sealbroker", registry.host());
    let tag = sign_py(&[
        "sign",
        key.with_extension("key").to_str().unwrap(),
        pass,
        &reference,
        &digest,
        layout.to_str().unwrap(),
    ]);
    assert_eq!(tag, format!("{}.sig", digest.replace(':', "-")));
    registry.push(&layout, &tag, "sealbroker", &tag);
    let (code, why) = verify_image(&trusted, &registry, &signed);
    assert_eq!(code, 0, "{why}");

    // The same signature does not vouch for the image under another name.
    registry.push(&layout, &tag, "sealbroker-unsigned", &tag);
    let (code, why) = verify_image(&trusted, &registry, &unsigned);
    assert_eq!(code, 1, "{why}");
    assert!(why.contains("the signature names"), "{why}");

    // Nor does it verify with a key the operator was not given.
    let (code, why) = verify_image(&other.with_extension("pub"), &registry, &signed);
    assert_eq!(code, 1, "{why}");
    assert!(why.contains("does not verify with the trusted key"), "{why}");

    // A tag is not enough: Hardened wants the digest.
    let (code, why) = verify_image(&trusted, &registry, &format!("{}/sealbroker:ci", registry.host()));
    assert_eq!(code, 1, "{why}");
    assert!(why.contains("not an image pinned by digest"), "{why}");
}

#[test]
fn the_broker_image_runs_on_its_own_libraries_as_65532_and_installs_the_plugin_without_cp() {
    assert_eq!(
        current_uid(),
        0,
        "this test unpacks the image and chroots into it, which needs root (CI runs as root)"
    );
    let images = Images::get();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:broker", images.layout().display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rootfs = bundle.join("rootfs");
    // The init container's plugin volume, writable by the broker's uid only.
    let plugins = rootfs.join("sealbroker-plugins");
    fs::create_dir(&plugins).unwrap();
    let chown = Command::new("chown")
        .arg("65532:65532")
        .arg(&plugins)
        .status()
        .unwrap();
    assert!(chown.success());

    let run = |args: &[&str]| {
        Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(&rootfs)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .unwrap()
    };
    let version = run(&["/usr/local/bin/sealbroker", "--version"]);
    assert!(
        version.status.success(),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("sealbroker "));
    // The operator's init container: `sealbroker install-plugin DEST`.
    let install = run(&[
        "/usr/local/bin/sealbroker",
        "install-plugin",
        "/sealbroker-plugins/sealbroker",
    ]);
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let installed = fs::read(plugins.join("sealbroker")).unwrap();
    assert_eq!(
        installed,
        fs::read(rootfs.join("usr/local/bin/sealbroker")).unwrap()
    );
    let no_shell = run(&["/bin/sh", "-c", "true"]);
    assert!(!no_shell.status.success(), "the image has a shell");
}

/// Cargo.lock's (version, checksum) for a crates.io package.
fn lock_entry(name: &str) -> (String, String) {
    let lock = fs::read_to_string(repo_root().join("Cargo.lock")).unwrap();
    let block = lock
        .split("[[package]]")
        .find(|b| b.contains(&format!("\nname = \"{name}\"\n")))
        .unwrap_or_else(|| panic!("Cargo.lock has no {name}"));
    let field = |key: &str| {
        block
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("Cargo.lock's {name} has no {key}"))
            .to_owned()
    };
    (field("version"), field("checksum"))
}

/// The pinned base packages (images/base-packages.txt): name → version.
fn base_packages() -> BTreeMap<String, String> {
    fs::read_to_string(repo_root().join("images/base-packages.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, version) = l.split_once(' ').unwrap();
            (name.to_owned(), version.trim().to_owned())
        })
        .collect()
}

/// A manifest from the registry by tag or digest, and its digest.
fn registry_manifest(registry: &Registry, repo: &str, reference: &str) -> (String, serde_json::Value) {
    let (status, _, body) = http_get(
        registry.port,
        &format!("/v2/{repo}/manifests/{reference}"),
        OCI_MANIFEST,
    )
    .unwrap();
    assert_eq!(
        status,
        200,
        "{repo}:{reference}: {}",
        String::from_utf8_lossy(&body)
    );
    (
        format!("sha256:{}", sha256_hex(&body)),
        serde_json::from_slice(&body).unwrap(),
    )
}

fn registry_blob(registry: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let (status, _, body) = http_get(registry.port, &format!("/v2/{repo}/blobs/{digest}"), "").unwrap();
    assert_eq!(status, 200, "{repo} blob {digest}");
    assert_eq!(format!("sha256:{}", sha256_hex(&body)), digest);
    body
}

/// The CycloneDX library's own strict validator, on the SBOM's bytes.
fn cyclonedx_schema_errors(sbom: &Path) -> String {
    let out = Command::new(peers_python())
        .args([
            "-c",
            "import sys\n\
             from cyclonedx.schema import SchemaVersion\n\
             from cyclonedx.validation.json import JsonStrictValidator\n\
             errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(open(sys.argv[1]).read())\n\
             print(errors or '', end='')",
        ])
        .arg(sbom)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `sealbroker-operator verify-blob`: (exit code, stderr).
fn verify_blob(key: &Path, signature: &Path, file: &Path) -> (i32, String) {
    let operator = sealbroker_bin().parent().unwrap().join("sealbroker-operator");
    let out = Command::new(&operator)
        .arg("verify-blob")
        .arg("--key")
        .arg(key)
        .arg("--signature")
        .arg(signature)
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openssl dgst -sha256 -verify`, an implementation that is not ours.
fn openssl_verifies(key: &Path, signature_b64: &Path, file: &Path) -> bool {
    let der = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        fs::read_to_string(signature_b64).unwrap().trim(),
    )
    .unwrap();
    let der_file = signature_b64.with_extension("der");
    fs::write(&der_file, der).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(key)
        .arg("-signature")
        .arg(&der_file)
        .arg(file)
        .output()
        .unwrap();
    let verified = String::from_utf8_lossy(&out.stdout).contains("Verified OK");
    assert_eq!(verified, out.status.success(), "{out:?}");
    verified
}

#[test]
fn a_release_is_published_signed_with_signed_sboms_and_a_signed_plugin_binary() {
    let images = Images::get();
    let registry = Registry::start();
    let keys = tempfile::tempdir().unwrap();
    let passphrase = keys.path().join("passphrase");
    fs::write(&passphrase, "images-e2e-release-passphrase-8830").unwrap();
    sweep::secret("images-e2e-release-passphrase-8830");
    let key = keys.path().join("release");
    let other = keys.path().join("other");
    let pass = passphrase.to_str().unwrap();
    sign_py(&["keygen", key.to_str().unwrap(), pass]);
    sign_py(&["keygen", other.to_str().unwrap(), pass]);
    let trusted = key.with_extension("pub");
    let untrusted = other.with_extension("pub");

    let assets = keys.path().join("assets");
    let out = Command::new("bash")
        .arg(repo_root().join("images/publish.sh"))
        .args(["--plain-http", "--assets"])
        .arg(&assets)
        .arg(&images.dir)
        .arg(registry.host())
        .arg(key.with_extension("key"))
        .arg(&passphrase)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "images/publish.sh: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed: Vec<(&str, &str)> = stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    let named = |kind: &str| -> Vec<&str> {
        pushed
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, r)| *r)
            .collect()
    };
    assert_eq!(named("image").len(), 3, "{stdout}");
    assert_eq!(named("sbom").len(), 3, "{stdout}");
    assert_eq!(named("signature").len(), 6, "{stdout}");

    let pins = base_packages();
    let (ring_version, ring_checksum) = lock_entry("ring");
    for (image, repo, digest_key) in [
        ("broker", "sealbroker", "SEALBROKER_IMAGE_DIGEST"),
        (
            "operator",
            "sealbroker-operator",
            "SEALBROKER_OPERATOR_IMAGE_DIGEST",
        ),
        (
            "kms-plugin",
            "sealbroker-kms-plugin",
            "SEALBROKER_KMS_PLUGIN_IMAGE_DIGEST",
        ),
    ] {
        let digest = images.digest(digest_key);
        let reference = format!("{}/{repo}@{digest}", registry.host());
        assert!(
            named("image").contains(&reference.as_str()),
            "{reference} not in {stdout}"
        );
        // The image verifies with the release key, and only with it.
        let (code, why) = verify_image(&trusted, &registry, &reference);
        assert_eq!(code, 0, "{reference}: {why}");
        let (code, why) = verify_image(&untrusted, &registry, &reference);
        assert_eq!(
            code, 1,
            "{reference} verified with a key that did not sign it: {why}"
        );

        // Its SBOM sits at the tag cosign uses, is signed, and is the build's.
        let sbom_tag = format!("{}.sbom", digest.replace(':', "-"));
        let (attachment_digest, attachment) = registry_manifest(&registry, repo, &sbom_tag);
        let layers = attachment["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{attachment}");
        assert_eq!(layers[0]["mediaType"], "application/vnd.cyclonedx+json");
        let sbom_bytes = registry_blob(&registry, repo, layers[0]["digest"].as_str().unwrap());
        assert_eq!(
            sbom_bytes,
            fs::read(images.dir.join("sbom").join(format!("{image}.cdx.json"))).unwrap(),
            "the registry's {image} SBOM is not the one the build wrote"
        );
        let sbom_reference = format!("{}/{repo}@{attachment_digest}", registry.host());
        assert!(
            named("sbom").contains(&sbom_reference.as_str()),
            "{sbom_reference} not in {stdout}"
        );
        let (code, why) = verify_image(&trusted, &registry, &sbom_reference);
        assert_eq!(code, 0, "{sbom_reference}: {why}");
        let (code, why) = verify_image(&untrusted, &registry, &sbom_reference);
        assert_eq!(
            code, 1,
            "{sbom_reference} verified with a key that did not sign it: {why}"
        );

        let sbom_file = keys.path().join(format!("{image}.cdx.json"));
        fs::write(&sbom_file, &sbom_bytes).unwrap();
        assert_eq!(
            cyclonedx_schema_errors(&sbom_file),
            "",
            "{image} SBOM is not valid CycloneDX 1.6"
        );
        let sbom: serde_json::Value = serde_json::from_slice(&sbom_bytes).unwrap();
        assert_eq!(sbom["bomFormat"], "CycloneDX");
        assert_eq!(sbom["metadata"]["component"]["type"], "container");
        assert_eq!(sbom["metadata"]["component"]["version"], digest);
        let components = sbom["components"].as_array().unwrap();
        let component = |name: &str| components.iter().find(|c| c["name"] == name);

        // The binary, by the SHA-256 of the bytes in the image.
        let (path, package) = match image {
            "broker" => ("/usr/local/bin/sealbroker", "sealbroker"),
            "operator" => ("/usr/local/bin/sealbroker-operator", "sealbroker-operator"),
            _ => ("/sealbroker", "sealbroker"),
        };
        let file = component(path).unwrap_or_else(|| panic!("{image} SBOM lists no {path}"));
        assert_eq!(file["type"], "file");
        if package == "sealbroker" {
            assert_eq!(
                file["hashes"][0]["content"],
                images.digest("SEALBROKER_PLUGIN_SHA256"),
                "{image} SBOM hashes another binary"
            );
        }
        // A crate it links, at Cargo.lock's version and .crate checksum.
        let ring = component("ring").unwrap_or_else(|| panic!("{image} SBOM lists no ring"));
        assert_eq!(ring["version"], ring_version.as_str());
        assert_eq!(ring["purl"], format!("pkg:cargo/ring@{ring_version}"));
        assert_eq!(ring["hashes"][0]["alg"], "SHA-256");
        assert_eq!(ring["hashes"][0]["content"], ring_checksum.as_str());
        // No build-time-only crate: proc-macros are not in the binary.
        assert!(
            component("syn").is_none(),
            "{image} SBOM lists syn, a build-time crate"
        );
        assert!(
            components.len() > 100,
            "{image} SBOM lists only {} components",
            components.len()
        );
        // The base layer's packages at their pins, where there is a base layer.
        for (name, version) in &pins {
            match (image, component(name)) {
                ("kms-plugin", None) => {}
                ("kms-plugin", Some(c)) => {
                    panic!("the plugin image has no base layer, but its SBOM lists {c}")
                }
                (_, Some(c)) => {
                    assert_eq!(c["version"], version.as_str(), "{image} {name}");
                    // Package URLs percent-encode the `+` of libstdc++6 and of versions.
                    let purl = c["purl"].as_str().unwrap().replace("%2B", "+");
                    assert!(
                        purl.starts_with(&format!("pkg:deb/debian/{name}@{version}?arch=")),
                        "{c}"
                    );
                }
                (_, None) => panic!("{image} SBOM lists no {name}"),
            }
        }
    }

    // An SBOM is attached only to the image it describes.
    let out = Command::new(peers_python())
        .arg(repo_root().join("images/sign.py"))
        .args(["attach-sbom", images.digest("SEALBROKER_IMAGE_DIGEST")])
        .arg(images.dir.join("sbom/kms-plugin.cdx.json"))
        .arg(keys.path().join("wrong-attachment"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("describes another image"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The plugin binary: the plugin image's bytes, with a detached signature
    // that openssl and the operator both check.
    let binary = assets.join("sealbroker");
    let signature = assets.join("sealbroker.sig");
    assert_eq!(
        sha256_hex(&fs::read(&binary).unwrap()),
        images.digest("SEALBROKER_PLUGIN_SHA256")
    );
    assert_eq!(
        fs::read_to_string(assets.join("sealbroker.sha256")).unwrap(),
        format!("{}  sealbroker\n", images.digest("SEALBROKER_PLUGIN_SHA256"))
    );
    assert!(assets.join("sealbroker.cdx.json").is_file());
    assert!(openssl_verifies(&trusted, &signature, &binary));
    let (code, why) = verify_blob(&trusted, &signature, &binary);
    assert_eq!(code, 0, "{why}");
    let (code, why) = verify_blob(&untrusted, &signature, &binary);
    assert_eq!(code, 1, "{why}");
    assert!(why.contains("does not verify with the trusted key"), "{why}");

    // One flipped byte and neither accepts it.
    let mut bytes = fs::read(&binary).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let tampered = keys.path().join("sealbroker-tampered");
    fs::write(&tampered, bytes).unwrap();
    assert!(!openssl_verifies(&trusted, &signature, &tampered));
    let (code, why) = verify_blob(&trusted, &signature, &tampered);
    assert_eq!(code, 1, "{why}");
    assert!(why.contains("does not verify"), "{why}");
}
