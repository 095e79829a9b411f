//! Command-line definitions. The help text is the first manual most
//! operators read, so it shows real invocations.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sealbroker",
    version,
    about = "One audited wrap/unwrap door between OpenBao (or anything needing a root of trust) and your HSM or KMS.",
    long_about = "sealbroker is a seal/KMS broker daemon. It gives callers one wrap/unwrap API over \
pluggable backends (PKCS#11 HSMs, a development-only software key, and more), and keeps the \
backend credentials (HSM PIN, cloud identity) to itself.\n\n\
Quick start (development profile, software key, loopback only):\n  \
sealbroker serve --dev\n  \
echo -n 'my secret' | sealbroker wrap --key dev > blob.b64\n  \
sealbroker unwrap < blob.b64\n\n\
Production: write a config file (see docs/configuration.md) and run\n  \
sealbroker serve --config /etc/sealbroker/sealbroker.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the broker daemon.
    Serve(ServeArgs),
    /// OpenBao KMS plugin mode: launched by OpenBao (plugin "kms"), never by hand.
    #[command(
        name = "kms-plugin",
        after_help = "OpenBao starts this with its plugin handshake in the environment. Configure it in OpenBao:\n\n  \
plugin \"kms\" \"sealbroker\" {\n    command = \"sealbroker\"\n    args = [\"kms-plugin\"]\n    sha256sum = \"<sha256>\"\n  }\n  \
seal \"sealbroker\" {\n    endpoint = \"unix:///run/sealbroker/sealbroker.sock\"\n    key_name = \"openbao-unseal\"\n  }\n\n\
To stand in for one of OpenBao's official KMS plugins, name its seal type and keep the stock \
stanza unchanged (see docs/openbao.md, \"Drop-in for the official KMS plugins\"):\n\n  \
plugin \"kms\" \"awskms\" {\n    command = \"sealbroker\"\n    args = [\"kms-plugin\", \"awskms\"]\n    sha256sum = \"<sha256>\"\n  }\n\n\
See docs/openbao.md for the in-process mode (config_file) and every seal option."
    )]
    KmsPlugin(KmsPluginArgs),
    /// Create the key a config's [keys.NAME] table names, on its backend (PKCS#11 token or software key file).
    Keygen(KeygenArgs),
    /// Seal stdin under a key; print the blob (base64) on stdout.
    Wrap(WrapArgs),
    /// Open a blob (base64 on stdin); print the plaintext on stdout.
    Unwrap(UnwrapArgs),
    /// Re-seal a blob (base64 on stdin) under its key's current version.
    Rewrap(UnwrapArgs),
    /// Show the broker's profile and the health of every key.
    Status(StatusArgs),
    /// Manage keys: list, show, rotate, retire old versions.
    Keys(KeysArgs),
    /// Work with the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Copy this binary to DEST (mode 0755): the operator's init container
    /// installs the KMS plugin for OpenBao this way, from an image with no `cp`.
    #[command(name = "install-plugin")]
    InstallPlugin {
        /// Where OpenBao's plugin directory wants the binary.
        dest: PathBuf,
    },
    /// The PKCS#11 helper process (isolation = "process"): started by the
    /// broker with a socket on stdin, never by hand.
    #[command(name = "pkcs11-helper", hide = true)]
    Pkcs11Helper,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
sealbroker serve --dev\n  \
sealbroker serve --dev --data-dir /tmp/sb --port 0\n  \
sealbroker serve --config /etc/sealbroker/sealbroker.toml\n\n\
Signals: SIGTERM or SIGINT stop accepting connections, let in-flight requests finish \
(server.shutdown_grace_secs), remove the socket and exit 0. SIGHUP re-reads --config: keys, \
ACLs, transit tokens and TLS certificates change without a restart, and a bad file changes \
nothing (the old config keeps serving; `sealbroker status` says why). Changed config, TLS and \
token files are picked up on their own every server.reload_poll_secs.")]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(
        long,
        short,
        env = "SEALBROKER_CONFIG",
        required_unless_present = "dev",
        conflicts_with = "dev"
    )]
    pub config: Option<PathBuf>,
    /// Run on the embedded development config: a software key generated under --data-dir,
    /// a unix socket there, and plaintext gRPC on 127.0.0.1. Never for production.
    #[arg(long)]
    pub dev: bool,
    /// Where --dev keeps its key and socket [default: $XDG_DATA_HOME/sealbroker or ~/.local/share/sealbroker].
    #[arg(long, env = "SEALBROKER_DATA_DIR", requires = "dev")]
    pub data_dir: Option<PathBuf>,
    /// TCP port for --dev (0 picks a free one).
    #[arg(long, default_value_t = 7070, requires = "dev")]
    pub port: u16,
    /// Check the config (and that every backend is reachable) and exit.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args)]
pub struct KmsPluginArgs {
    /// Stand in for OpenBao's official plugin of this seal type (e.g. awskms),
    /// reading its stock seal stanza and blobs. Without it: sealbroker's own stanza.
    #[arg(value_name = "SEAL_TYPE")]
    pub stock: Option<String>,
}

#[derive(Args)]
#[command(after_help = "Example (SoftHSM):\n  \
sealbroker keygen --config sealbroker.toml --key unseal\n  \
sealbroker keygen --config sealbroker.toml --key unseal --version 2\n\n\
PKCS#11 keys are created non-extractable and sensitive: AES-256 for AES_GCM, an RSA-3072 \
pair for RSA_PKCS_OAEP. An existing key with the same label/id is never overwritten. AWS KMS \
keys are made in KMS (never extractable) under the alias in key_id = \"alias/NAME\"; an alias \
that already names a key is refused. Transit keys are made upstream (aes256-gcm96, or the key \
pair's algorithm; never exportable); an existing upstream key is refused. Cloud KMS key pairs are \
made as a new CryptoKey at HSM protection (never exportable) whose first version is \
key_version = \"1\"; an existing CryptoKey is refused, and symmetric Cloud KMS keys are made \
with Google's tools. Key Vault key pairs are made as RSA-HSM or EC-HSM keys with \
exportable = false; keygen prints the version to set as key_version.\n\n\
A key with algorithm = \"ecdsa-p256\" (or ecdsa-p384, ed25519, rsa-2048/3072/4096) is a key \
pair for External Keys: it signs, or with mechanism = \"RSA_PKCS_OAEP\" it decrypts \
(docs/external-keys.md).\n\n\
--version N creates version N of the key on its backend, named as every replica derives it \
(unseal-v2 on PKCS#11, <key_name>-v2 on KMIP, <key_file>.v2, alias/NAME-v2 for an AWS KMS key \
pair; AWS KMS sealing keys and transit rotate the key), with no running broker: the step a rotation Job runs with the broker's credentials. \
Run again, it finds the version instead of making a second one (AWS KMS sealing keys and \
transit rotate again). Then set newest_version = N in every replica's config to stage it.")]
pub struct KeygenArgs {
    #[arg(long, short, env = "SEALBROKER_CONFIG")]
    pub config: PathBuf,
    /// Name of the [keys.NAME] table.
    #[arg(long)]
    pub key: String,
    /// Create version N (2 or more) of the key instead of its first key.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
    pub version: Option<u32>,
}

/// How to reach a running broker.
#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// The broker's unix socket [default: the --dev socket].
    #[arg(long, env = "SEALBROKER_SOCKET", conflicts_with = "address")]
    pub socket: Option<PathBuf>,
    /// The broker's TCP address (HOST:PORT). With --ca-file, mutual TLS is used.
    #[arg(long, env = "SEALBROKER_ADDRESS")]
    pub address: Option<String>,
    /// CA certificate (PEM) that signed the broker's certificate.
    #[arg(long, env = "SEALBROKER_CA_FILE", requires_all = ["cert_file", "key_file"])]
    pub ca_file: Option<PathBuf>,
    /// Our client certificate (PEM).
    #[arg(long, env = "SEALBROKER_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Our client key (PEM).
    #[arg(long, env = "SEALBROKER_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Name to verify in the broker's certificate [default: the host in --address].
    #[arg(long, env = "SEALBROKER_SERVER_NAME")]
    pub server_name: Option<String>,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
echo -n 's3cret' | sealbroker wrap --key dev > blob.b64\n  \
sealbroker wrap --key unseal --aad cluster-a --base64 < dek.b64")]
pub struct WrapArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Key to seal under.
    #[arg(long)]
    pub key: String,
    /// Additional authenticated data (a string); the same value is needed to unwrap.
    #[arg(long, default_value = "")]
    pub aad: String,
    /// Stdin holds base64, not raw bytes.
    #[arg(long)]
    pub base64: bool,
}

#[derive(Args)]
#[command(after_help = "Example:\n  sealbroker unwrap --aad cluster-a < blob.b64")]
pub struct UnwrapArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Require the blob to be sealed under this key.
    #[arg(long, default_value = "")]
    pub key: String,
    /// The AAD given at wrap time.
    #[arg(long, default_value = "")]
    pub aad: String,
    /// Print the plaintext as base64 instead of raw bytes.
    #[arg(long)]
    pub base64: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Probe every backend now instead of reporting the cached result.
    #[arg(long)]
    pub deep: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
sealbroker keys list\n  \
sealbroker keys show unseal\n  \
sealbroker keys rotate unseal                 # new version on the backend; old blobs still unwrap\n  \
sealbroker keys rotate unseal --stage         # several replicas: create it, promote later in the config\n  \
sealbroker keys min-version unseal 2          # refuse blobs under versions below 2")]
pub struct KeysArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub action: Option<KeysAction>,
}

#[derive(Subcommand, Clone)]
pub enum KeysAction {
    /// List every key (the default).
    List,
    /// Describe one key: versions and key ids.
    Show { name: String },
    /// Create a new version of the key on its backend(s) and make it primary.
    ///
    /// With --stage, the version is only created (or found, when another
    /// replica made it) and opens blobs; wraps stay on the primary until the
    /// config's `primary_version` names it on every replica.
    Rotate {
        name: String,
        /// Create the version without making it primary (two-phase rotation across replicas).
        #[arg(long)]
        stage: bool,
    },
    /// Retire versions below VERSION: their blobs are refused from now on.
    MinVersion { name: String, version: u32 },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check an audit trail's chain; names the first changed, removed or reordered line.
    ///
    /// A keyed chain (`[audit] seal_key`) is checked with --config: the chain key is
    /// unsealed through the broker's own backend, and the log is held against its
    /// checkpoint, so a cut end, a replaced or a deleted log are found too. Nothing
    /// is written: it is safe beside a running broker.
    #[command(
        after_help = "Examples:\n  sealbroker audit verify --config /etc/sealbroker/sealbroker.toml\n  \
sealbroker audit verify /var/log/sealbroker/audit.log      # an unkeyed (development) chain\n\n\
Exit code 0: intact. 1: broken (the line and the reason are printed). 2: could not check."
    )]
    Verify {
        /// The log; with --config, overrides its audit.file.
        #[arg(required_unless_present = "config")]
        file: Option<PathBuf>,
        /// The broker's config: checks a keyed chain against its checkpoint.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}
