//! `sealbroker`: the daemon and its command-line client.

mod backends;
mod cli;
mod client_cmd;
mod serve;

use std::process::ExitCode;

use clap::Parser;

/// Copies the running binary to `dest` through a temporary file beside it,
/// so OpenBao never sees a half-written plugin.
fn install_plugin(dest: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Without /proc (a bare chroot), the absolute path it was started by.
    let source = std::env::current_exe().or_else(|e| {
        std::env::args_os()
            .next()
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_absolute())
            .ok_or(e)
    })?;
    let name = dest
        .file_name()
        .ok_or_else(|| std::io::Error::other("names no file"))?;
    let mut partial = name.to_owned();
    partial.push(".partial");
    let partial = dest.with_file_name(partial);
    std::fs::copy(&source, &partial)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, dest)
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let cli::Command::Pkcs11Helper = cli.command {
        // No async runtime: the helper is threads around one PKCS#11 module.
        return sealbroker_backend_pkcs11::helper::serve_stdin();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sealbroker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Serve(args) => serve::run(args).await,
            cli::Command::KmsPlugin(args) => serve::kms_plugin(args.stock).await,
            cli::Command::Keygen(args) => serve::keygen(args).await,
            cli::Command::Wrap(args) => client_cmd::wrap(args).await,
            cli::Command::Unwrap(args) => client_cmd::unwrap(args).await,
            cli::Command::Rewrap(args) => client_cmd::rewrap(args).await,
            cli::Command::Status(args) => client_cmd::status(args).await,
            cli::Command::Keys(args) => client_cmd::keys(args).await,
            cli::Command::Audit(cli::AuditCommand::Verify { file, config }) => {
                serve::audit_verify(file.as_deref(), config.as_deref()).await
            }
            cli::Command::Pkcs11Helper => Ok(sealbroker_backend_pkcs11::helper::serve_stdin()),
            cli::Command::InstallPlugin { dest } => match install_plugin(&dest) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("sealbroker: install-plugin {}: {e}", dest.display());
                    Ok(ExitCode::FAILURE)
                }
            },
        }
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("sealbroker: {message}");
            ExitCode::from(2)
        }
    }
}
