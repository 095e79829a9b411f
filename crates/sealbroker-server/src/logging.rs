//! Log setup: `tracing` to stderr, as text or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `SEALBROKER_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = std::env::var("SEALBROKER_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colour only for a person at a terminal: journald, kubectl logs and
    // log shippers get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Formats events as `[LEVEL] target: message key=value`, which OpenBao's
/// plugin log forwarding understands: it keeps the level of lines that start
/// with `[INFO]`, `[WARN]` and so on, and files everything else as DEBUG.
struct LevelPrefixed;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LevelPrefixed
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        write!(writer, "[{}] {}: ", meta.level(), meta.target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Log setup for `kms-plugin`: stderr (stdout carries the handshake),
/// level-prefixed lines. `SEALBROKER_LOG` sets the filter (default `info`).
pub fn init_plugin() {
    let filter = std::env::var("SEALBROKER_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        // Once OpenBao dies, stderr is a broken pipe; reporting that failed
        // write with eprintln! would panic the task that is about to stop us.
        .log_internal_errors(false)
        .event_format(LevelPrefixed)
        .try_init();
}
