//! Logging set-up: human-readable text in a terminal, JSON lines for log collectors; and span
//! fields that are formatted only when a line is written in their span.

use tracing::field::FieldSet;
use tracing::span::Record;
use tracing::{Event, Span, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, JsonFields};
use tracing_subscriber::fmt::{FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::{ExtensionsMut, LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// Installs the global subscriber. A second call (tests building several apps) keeps the first.
pub fn init(settings: &LogSettings) {
    // The filter was validated when settings were loaded; fall back to `info` all the same.
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only on a terminal; piped logs must stay plain for collectors and tests.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _already_set = subscriber(settings.format, filter, ansi, std::io::stdout).try_init();
}

/// The services' subscriber, writing to `writer`: `init`'s, and the one tests capture lines with.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // The deferred fields' layer sits below the formatter, so it sees an event first and the
    // formatter then finds the span's fields in place.
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => Box::new(
            registry.with(DeferredFields::text()).with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    .with_ansi(ansi)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Json => Box::new(
            registry.with(DeferredFields::json()).with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(writer),
            ),
        ),
    }
}

/// Span fields to be recorded when the first line inside the span is written. A request's span
/// is made for every request, and formatting its fields costs more than the rest of the span's
/// bookkeeping; most requests write no line at all.
pub trait DeferredRecord: Send + Sync + 'static {
    /// Hands `sink` the fields of `fields` (the span's), as `Span::record` would take them.
    fn record(&self, fields: &FieldSet, sink: &mut dyn FnMut(&Record<'_>));
}

/// The deferred fields of a span, kept in its registry extensions until a line needs them.
struct Pending(Box<dyn DeferredRecord>);

/// Gives `span` its fields now if the subscriber cannot defer them, else when the first line is
/// written in it. The span must declare the fields (`field::Empty`); the log line is the same as
/// with the fields given when the span was made.
pub fn defer(span: &Span, fields: impl DeferredRecord) {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch
            .downcast_ref::<DeferredFields>()
            .and(dispatch.downcast_ref::<Registry>());
        match registry.and_then(|registry| registry.span(id)) {
            Some(data) => {
                let _earlier = data.extensions_mut().replace(Pending(Box::new(fields)));
            }
            None => {
                let Some(metadata) = span.metadata() else {
                    return;
                };
                fields.record(metadata.fields(), &mut |record| dispatch.record(id, record));
            }
        }
    });
}

/// The layer that records a span's [`defer`]red fields when an event is written in it. Its
/// field formatter must be the `fmt` layer's.
#[derive(Debug)]
pub struct DeferredFields {
    format: FieldFormat,
}

#[derive(Debug)]
enum FieldFormat {
    Text(DefaultFields),
    Json(JsonFields),
}

impl DeferredFields {
    fn text() -> DeferredFields {
        DeferredFields {
            format: FieldFormat::Text(DefaultFields::new()),
        }
    }

    fn json() -> DeferredFields {
        DeferredFields {
            format: FieldFormat::Json(JsonFields::new()),
        }
    }

    fn add(&self, extensions: &mut ExtensionsMut<'_>, record: &Record<'_>) {
        // A field the formatter cannot write is dropped from that line, as `fmt` drops it.
        let _unwritable = match &self.format {
            FieldFormat::Text(format) => Self::add_with(format, extensions, record),
            FieldFormat::Json(format) => Self::add_with(format, extensions, record),
        };
    }

    fn add_with<N>(
        format: &N,
        extensions: &mut ExtensionsMut<'_>,
        record: &Record<'_>,
    ) -> std::fmt::Result
    where
        N: for<'w> FormatFields<'w> + 'static,
    {
        match extensions.get_mut::<FormattedFields<N>>() {
            Some(formatted) => format.add_fields(formatted, record),
            None => Ok(()),
        }
    }
}

impl<S> Layer<S> for DeferredFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            let mut extensions = span.extensions_mut();
            let Some(Pending(fields)) = extensions.remove::<Pending>() else {
                continue;
            };
            fields.record(span.metadata().fields(), &mut |record| {
                self.add(&mut extensions, record)
            });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tracing::field::{Empty, Value};

    use super::*;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        pub(crate) fn text(&self) -> String {
            let bytes = self.0.lock().expect("log buffer").clone();
            String::from_utf8(bytes).expect("utf-8")
        }

        fn lines(&self) -> Vec<String> {
            let text = self.text();
            // The time stamp differs from line to line; the rest must not.
            text.lines()
                .map(
                    |line| match serde_json::from_str::<serde_json::Value>(line) {
                        Ok(mut json) => {
                            json["timestamp"].take();
                            json.to_string()
                        }
                        Err(_) => line
                            .split_once(' ')
                            .map_or(line, |(_, rest)| rest)
                            .to_owned(),
                    },
                )
                .collect()
        }
    }

    struct Fields {
        id: &'static str,
        count: u64,
        formatted: Arc<AtomicUsize>,
    }

    impl DeferredRecord for Fields {
        fn record(&self, fields: &FieldSet, sink: &mut dyn FnMut(&Record<'_>)) {
            self.formatted.fetch_add(1, Ordering::SeqCst);
            let (Some(id), Some(count)) = (fields.field("id"), fields.field("count")) else {
                return;
            };
            let values = [
                (&id, Some(&self.id as &dyn Value)),
                (&count, Some(&self.count as &dyn Value)),
            ];
            sink(&Record::new(&fields.value_set(&values)));
        }
    }

    /// A span declaring `id` and `count` empty, given them by [`defer`].
    fn deferred_span(id: &'static str, count: u64, formatted: &Arc<AtomicUsize>) -> Span {
        let span = tracing::error_span!("work", id = Empty, count = Empty);
        let formatted = formatted.clone();
        defer(
            &span,
            Fields {
                id,
                count,
                formatted,
            },
        );
        span
    }

    fn write_lines(format: LogFormat, filter: &str, ansi: bool) -> (Vec<String>, usize) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = subscriber(format, EnvFilter::new(filter), ansi, move || writer.clone());
        let formatted = Arc::new(AtomicUsize::new(0));
        tracing::subscriber::with_default(subscriber, || {
            let given = tracing::error_span!("work", id = "abc-1", count = 7_u64);
            given.in_scope(|| tracing::warn!(step = 1, "inside"));
            let deferred = deferred_span("abc-1", 7, &formatted);
            deferred.in_scope(|| {
                tracing::info!("filtered out at warn");
                tracing::warn!(step = 1, "inside");
                tracing::warn!(step = 2, "again");
            });
        });
        (captured.lines(), formatted.load(Ordering::SeqCst))
    }

    #[test]
    fn deferred_fields_give_the_same_lines_as_fields_given_when_the_span_is_made() {
        for (format, ansi) in [
            (LogFormat::Text, false),
            (LogFormat::Text, true),
            (LogFormat::Json, false),
        ] {
            let (lines, formatted) = write_lines(format, "warn", ansi);
            assert_eq!(lines.len(), 3, "{format:?}: {lines:#?}");
            assert_eq!(lines[0], lines[1], "{format:?}");
            assert!(lines[2].contains("again"), "{format:?}: {lines:#?}");
            assert!(lines[2].contains("abc-1"), "{format:?}: {lines:#?}");
            assert_eq!(formatted, 1, "formatted once, at the first line");
        }
    }

    #[test]
    fn deferred_fields_are_never_formatted_when_no_line_is_written_in_their_span() {
        let (lines, formatted) = write_lines(LogFormat::Json, "error", false);
        assert!(lines.is_empty(), "{lines:#?}");
        assert_eq!(formatted, 0);
    }

    #[test]
    fn without_the_deferring_layer_the_fields_are_recorded_at_once() {
        let captured = Captured::default();
        let writer = captured.clone();
        let plain = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let formatted = Arc::new(AtomicUsize::new(0));
        tracing::subscriber::with_default(plain, || {
            let span = deferred_span("abc-2", 9, &formatted);
            span.in_scope(|| tracing::warn!("inside"));
        });
        assert_eq!(formatted.load(Ordering::SeqCst), 1);
        let lines = captured.lines();
        assert!(
            lines[0].contains("work{id=\"abc-2\" count=9}"),
            "{lines:#?}"
        );
    }
}
