//! Logging set-up: human-readable text in a terminal, JSON lines for log collectors.

use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// Installs the global subscriber. A second call (tests building several apps) keeps the first.
pub fn init(settings: &LogSettings) {
    // The filter was validated when settings were loaded; fall back to `info` all the same.
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_target(true)
        // Colour codes only on a terminal; piped logs must stay plain for collectors and tests.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _already_set = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
