//! `sealbroker-operator`: the controller and webhook, the one-shot
//! provisioner, and offline commands that print what the controller would
//! write (CRD, rendered config, desired objects).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use sealbroker_operator::crd::SealBroker;
use sealbroker_operator::render::{self, Layout, paths};
use sealbroker_operator::signature::{ImageVerifier, RefuseAll, RegistryVerifier, TrustedKey, verify_blob};
use sealbroker_operator::{desired, kubeapi, validation, webhook};

#[derive(Parser)]
#[command(
    name = "sealbroker-operator",
    version,
    about = "Kubernetes operator for sealbroker (docs/operator.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller and the admission webhook (the long-running Deployment).
    Run(RunArgs),
    /// Grant a SealBroker's broker its ServiceAccount and read access to exactly
    /// the Secrets it names (one-shot, run by a platform admin or a Job).
    Provision(ProvisionArgs),
    /// Print what a platform admin applies once per tenant namespace: its
    /// tenant and Pod Security labels, a default-deny NetworkPolicy, and the
    /// controller's and provisioner's Roles scoped by resourceNames to the
    /// SealBrokers named (docs/operator.md, "Onboarding").
    #[command(after_help = "Examples:
  sealbroker-operator onboard --namespace openbao openbao | kubectl apply -f -
  sealbroker-operator onboard -n payments vault-a vault-b --pod-security-version v1.32

Adding a SealBroker to an onboarded namespace is onboarding it again with every name.")]
    Onboard(OnboardArgs),
    /// Print the SealBroker CRD (deploy/crd/ is this output).
    Crd,
    /// Print ValidatingAdmissionPolicies and their bindings:
    /// `pod-reports` (deploy/base/operator/pod-report-policy.yaml) fences the
    /// sidecars' pod reports; `tenant-isolation`
    /// (deploy/base/operator/tenant-policies.yaml) fences the provisioner,
    /// the controller and the onboarded namespaces' labels.
    Policy {
        #[arg(value_enum, default_value = "pod-reports")]
        set: PolicySet,
    },
    /// Print or write the broker config (TOML) and OpenBao seal stanza (HCL),
    /// exactly as the controller renders them into ConfigMaps.
    #[command(
        after_help = "Example:\n  sealbroker-operator render -f sealbroker.yaml --root /tmp/sb --out /tmp/sb"
    )]
    Render(RenderArgs),
    /// Print every object the controller and the provisioner would apply.
    Manifests(FileArg),
    /// Validate a SealBroker as the admission webhook does.
    Check(FileArg),
    /// Print the OpenBaoCluster fragment for the seeds' operator
    /// (dc-tec/openbao-operator): a `type: kms` entry in spec.plugins and
    /// spec.unseal of type kms, naming this SealBroker's socket, key and
    /// plugin digest (docs/operator.md, "Next to an existing OpenBao operator").
    #[command(
        name = "openbao-cluster",
        after_help = "Examples:
  sealbroker-operator openbao-cluster -f sealbroker.yaml \
    --plugin-image registry.example/sealbroker-kms-plugin@sha256:<digest>
  sealbroker-operator openbao-cluster -f sealbroker.yaml      # command: sealbroker, from the init container

With --plugin-image OpenBao downloads the plugin itself (plugin_auto_download); deploy/images.env has the digest. The pods must still carry the labels spec.openbao.selector matches, so the sidecar and its socket are injected."
    )]
    OpenbaoCluster(OpenBaoClusterArgs),
    /// Verify an image's signature as the controller does under Hardened:
    /// exits 0 when a signature by the trusted key names the image's
    /// repository and digest, 1 (saying why) otherwise.
    #[command(
        after_help = "Example:\n  sealbroker-operator verify-image --image-trust-key cosign.pub \\\n    registry.example/sealbroker@sha256:<digest>"
    )]
    VerifyImage(VerifyImageArgs),
    /// Verify a detached signature over a file, the released plugin binary:
    /// exits 0 when the signature (base64, as `images/sign.py sign-blob` and
    /// `cosign sign-blob --key` write it) verifies over the file's bytes with
    /// the trusted key, 1 (saying why) otherwise.
    #[command(after_help = "Example (docs/install.md, \"Signing\"):
  sealbroker-operator verify-blob --key release.pub --signature sealbroker.sig sealbroker
  sha256sum sealbroker      # then pin this in OpenBao's plugin \"kms\" stanza")]
    VerifyBlob(VerifyBlobArgs),
}

#[derive(Args)]
struct VerifyBlobArgs {
    /// The ECDSA P-256 public key (PEM) that made the release.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The signature file (base64 DER).
    #[arg(long, value_name = "FILE")]
    signature: PathBuf,
    /// The file it signs.
    file: PathBuf,
}

#[derive(Args)]
struct TrustArgs {
    /// The ECDSA P-256 public key (PEM) image signatures must verify with
    /// (images/sign.py keygen, or cosign generate-key-pair). Without it the
    /// controller refuses every Hardened SealBroker.
    #[arg(long, value_name = "FILE", env = "SEALBROKER_OPERATOR_IMAGE_TRUST_KEY")]
    image_trust_key: Option<PathBuf>,
    /// A registry (host:port) reached over plain HTTP instead of HTTPS; for
    /// loopback test registries only. Repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    plain_http_registry: Vec<String>,
}

#[derive(Args)]
struct VerifyImageArgs {
    #[command(flatten)]
    trust: TrustArgs,
    /// The image, pinned by digest: host/repository@sha256:<64 hex>.
    image: String,
}

/// The controller's image verifier: the registry client with the trusted
/// key, or one that refuses everything and says why.
fn image_verifier(trust: &TrustArgs) -> Arc<dyn ImageVerifier> {
    let refuse = |why: String| -> Arc<dyn ImageVerifier> { Arc::new(RefuseAll(why)) };
    let Some(path) = &trust.image_trust_key else {
        return refuse("the operator was started without --image-trust-key".into());
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return refuse(format!("--image-trust-key {}: {e}", path.display())),
    };
    match TrustedKey::from_pem(&text)
        .and_then(|key| RegistryVerifier::new(key, trust.plain_http_registry.clone()))
    {
        Ok(verifier) => Arc::new(verifier),
        Err(e) => refuse(format!("--image-trust-key {}: {e}", path.display())),
    }
}

#[derive(Args)]
struct OnboardArgs {
    /// The tenant namespace.
    #[arg(long, short = 'n')]
    namespace: String,
    /// The SealBrokers the namespace will hold (at least one).
    #[arg(required = true)]
    sealbrokers: Vec<String>,
    /// The Kubernetes version Pod Security's `restricted` level is pinned to.
    #[arg(long, default_value = sealbroker_operator::onboarding::POD_SECURITY_VERSION)]
    pod_security_version: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicySet {
    PodReports,
    TenantIsolation,
}

#[derive(Args)]
struct FileArg {
    /// SealBroker YAML file ("-" for stdin).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
}

#[derive(Args)]
struct OpenBaoClusterArgs {
    #[command(flatten)]
    input: FileArg,
    /// The KMS plugin image, pinned by digest, for OpenBao to download;
    /// without it the fragment names `command: sealbroker`.
    #[arg(long, value_name = "REPOSITORY@sha256:DIGEST")]
    plugin_image: Option<String>,
}

#[derive(Args)]
struct RenderArgs {
    #[command(flatten)]
    input: FileArg,
    /// Move the in-pod paths (socket, credentials, state, plugin directory)
    /// under DIR, to run the artifacts outside a pod.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Write sealbroker.toml and seal.hcl into DIR instead of printing them.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// What this process runs: the admission webhook, the controller, or
    /// both. Run the webhook with several replicas (it is stateless and
    /// fails closed); controller replicas elect one leader on a Lease, and
    /// only it reconciles.
    #[arg(long, value_enum, default_value = "all")]
    role: Role,
    /// This replica's name in the leader election (the Pod's name, from
    /// the downward API).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The namespace of the controller's Lease `sealbroker-operator` (the
    /// operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sealbroker-system")]
    lease_namespace: String,
    /// Webhook HTTPS address.
    #[arg(
        long,
        default_value = "0.0.0.0:8443",
        env = "SEALBROKER_OPERATOR_WEBHOOK_LISTEN"
    )]
    webhook_listen: SocketAddr,
    /// Webhook certificate chain (PEM).
    #[arg(long, default_value = "/tls/tls.crt")]
    tls_cert_file: PathBuf,
    /// Webhook private key (PEM).
    #[arg(long, default_value = "/tls/tls.key")]
    tls_key_file: PathBuf,
    /// Webhook connections held at once (in their TLS handshake or
    /// established). When full, the oldest still in its handshake is dropped
    /// for a new one, so idle sockets cannot lock out the API server.
    #[arg(long, default_value_t = 256)]
    webhook_max_connections: usize,
    /// Seconds a webhook client may take for its TLS handshake, and for a
    /// request's headers.
    #[arg(long, default_value_t = 10)]
    webhook_header_timeout_secs: u64,
    /// Seconds an established webhook connection may send nothing.
    #[arg(long, default_value_t = 120)]
    webhook_idle_timeout_secs: u64,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Args)]
struct ProvisionArgs {
    /// The SealBroker's namespace.
    #[arg(long, short = 'n')]
    namespace: String,
    /// The SealBroker's name.
    name: String,
}

fn read_input(path: &Path) -> Result<SealBroker, String> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let mut sb =
        sealbroker_operator::parse_sealbroker(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if sb.metadata.namespace.is_none() {
        sb.metadata.namespace = Some("default".into());
    }
    Ok(sb)
}

fn checked(path: &Path) -> Result<SealBroker, String> {
    let sb = read_input(path)?;
    let problems = validation::validate(&sb);
    if problems.is_empty() {
        Ok(sb)
    } else {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        Err(format!(
            "{}: SealBroker refused:\n{}",
            path.display(),
            lines.join("\n")
        ))
    }
}

fn render_cmd(args: &RenderArgs) -> Result<(), String> {
    let sb = checked(&args.input.file)?;
    let layout = args
        .root
        .as_deref()
        .map(Layout::rooted)
        .unwrap_or_else(Layout::pod);
    let config = render::broker_config(&sb, &layout);
    let stanza = render::seal_stanza(&sb, &layout);
    let Some(out) = &args.out else {
        print!(
            "# --- {} ---\n{config}\n# --- {} ---\n{stanza}",
            paths::CONFIG_FILE,
            paths::SEAL_FILE
        );
        return Ok(());
    };
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (file, text) in [(paths::CONFIG_FILE, &config), (paths::SEAL_FILE, &stanza)] {
        let path = out.join(file);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    // Where the kubelet would project each credential; outside a pod, put them there.
    for backend in &sb.spec.backends {
        for item in backend.credential_items() {
            println!(
                "secret {}/{} -> {}",
                item.secret,
                item.key,
                layout.credential(&backend.name, &item.file)
            );
        }
    }
    println!("socket {}", layout.socket());
    println!(
        "plugin_directory {}",
        layout.path(&sb.spec.openbao.plugin_directory)
    );
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALBROKER_OPERATOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// `run --role`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    /// The webhook and the controller in one process.
    All,
    /// The admission webhook only.
    Webhook,
    /// The controller only.
    Controller,
}

async fn run_cmd(args: &RunArgs) -> Result<(), String> {
    let serves_webhook = args.role != Role::Controller;
    let runs_controller = args.role != Role::Webhook;
    // A webhook's TLS and port are checked before anything runs.
    let webhook_setup = if serves_webhook {
        let tls = webhook::tls_config(&args.tls_cert_file, &args.tls_key_file).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(args.webhook_listen)
            .await
            .map_err(|e| format!("webhook listen {}: {e}", args.webhook_listen))?;
        Some((tls, listener))
    } else {
        None
    };
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_webhook = stop_rx.clone();
    let mut stop_controller = stop_rx;
    let bounds = webhook::Bounds {
        max_connections: args.webhook_max_connections.max(1),
        header_timeout: std::time::Duration::from_secs(args.webhook_header_timeout_secs.max(1)),
        idle: std::time::Duration::from_secs(args.webhook_idle_timeout_secs.max(1)),
    };
    let webhook_client = client.clone();
    let webhook = async move {
        if let Some((tls, listener)) = webhook_setup {
            tracing::info!(listen = %args.webhook_listen, "webhook serving");
            webhook::serve(
                listener,
                Arc::new(tls),
                Arc::new(webhook_client),
                bounds,
                async move {
                    let _ = stop_webhook.wait_for(|s| *s).await;
                },
            )
            .await;
        }
    };
    let images = image_verifier(&args.trust);
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .ok_or("name this replica for the leader election: --identity or POD_NAME (or HOSTNAME)")?;
    let election = sealbroker_operator::leader::Election::new(identity, args.lease_namespace.clone());
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = async move {
        if !runs_controller {
            return Ok(());
        }
        let leases = kube::Api::namespaced(client.clone(), &election.namespace);
        let mut stop_work = stop_controller.clone();
        let work = kubeapi::run_controller(client, images, async move {
            let _ = stop_work.wait_for(|s| *s).await;
        });
        let stop = async move {
            let _ = stop_controller.wait_for(|s| *s).await;
        };
        let led = sealbroker_operator::leader::lead(
            leases,
            election,
            k8s_openapi::jiff::Timestamp::now,
            work,
            stop,
        )
        .await;
        led.map_err(|lost| {
            // Stop the webhook too: the process exits and restarts as a candidate.
            let _ = lost_tx.send(());
            format!("stopping the controller: {}", lost.0)
        })
    };
    let signal = async move {
        tokio::select! {
            () = shutdown_signal() => tracing::info!("stopping"),
            Ok(()) = lost_rx => {}
        }
        let _ = stop_tx.send(true);
    };
    let (_, controller, _) = tokio::join!(webhook, controller, signal);
    controller
}

async fn provision_cmd(args: &ProvisionArgs) -> Result<(), String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    let applied = kubeapi::provision(&client, &args.namespace, &args.name)
        .await
        .map_err(|e| e.to_string())?;
    for line in applied {
        println!("applied {line}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only ring is linked, but say so rather than rely on rustls guessing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match &cli.command {
        Command::Crd => {
            print!("{}", sealbroker_operator::crd_yaml());
            Ok(())
        }
        Command::Onboard(args) => sealbroker_operator::onboarding::onboarding_yaml(
            &args.namespace,
            &args.sealbrokers,
            &args.pod_security_version,
        )
        .map(|yaml| print!("{yaml}"))
        .map_err(|e| e.to_string()),
        Command::Policy { set } => {
            print!(
                "{}",
                match set {
                    PolicySet::PodReports => sealbroker_operator::policy::pod_report_policy_yaml(),
                    PolicySet::TenantIsolation => sealbroker_operator::policy::tenant_policies_yaml(),
                }
            );
            Ok(())
        }
        Command::Render(args) => render_cmd(args),
        Command::Manifests(args) => checked(&args.file).map(|sb| {
            let mut objects = desired::controller_objects(&sb);
            objects.extend(desired::access_grant(&sb));
            print!("{}", desired::to_yaml(&objects));
        }),
        Command::OpenbaoCluster(args) => checked(&args.input.file).and_then(|sb| {
            let source = match &args.plugin_image {
                Some(image) => sealbroker_operator::seeds::PluginSource::Image(image),
                None => sealbroker_operator::seeds::PluginSource::Command,
            };
            sealbroker_operator::seeds::openbao_cluster_fragment(&sb, source).map(|text| print!("{text}"))
        }),
        Command::Check(args) => checked(&args.file).map(|sb| {
            println!(
                "SealBroker {} is valid ({:?} profile)",
                sb.metadata.name.unwrap_or_default(),
                sb.spec.profile
            );
        }),
        Command::VerifyImage(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sealbroker-operator: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            return match runtime.block_on(image_verifier(&args.trust).verify(&args.image)) {
                Ok(()) => {
                    println!("{} is signed by the trusted key", args.image);
                    ExitCode::SUCCESS
                }
                Err(refusal) => {
                    eprintln!("sealbroker-operator: refused: {refusal}");
                    ExitCode::from(1)
                }
            };
        }
        Command::VerifyBlob(args) => {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
            };
            let verdict = read(&args.key)
                .and_then(|pem| {
                    TrustedKey::from_pem(&String::from_utf8_lossy(&pem)).map_err(|e| format!("--key: {e}"))
                })
                .and_then(|key| {
                    let signature = read(&args.signature)?;
                    let data = read(&args.file)?;
                    verify_blob(&key, &data, &String::from_utf8_lossy(&signature))
                        .map_err(|why| format!("{}: {why}", args.file.display()))
                });
            return match verdict {
                Ok(()) => {
                    println!("{} is signed by the trusted key", args.file.display());
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("sealbroker-operator: refused: {why}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Run(_) | Command::Provision(_) => {
            init_tracing();
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sealbroker-operator: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            runtime.block_on(async {
                match &cli.command {
                    Command::Run(args) => run_cmd(args).await,
                    Command::Provision(args) => provision_cmd(args).await,
                    _ => Ok(()),
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sealbroker-operator: {message}");
            ExitCode::from(2)
        }
    }
}
