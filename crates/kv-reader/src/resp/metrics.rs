//! What the Redis-protocol read port counts.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The Redis-protocol read port's counts. Commands are counted by a closed set of labels (the
/// port's commands, `write` for refused writes, `other` for unknown ones), each counter looked
/// up once here, never per command.
#[derive(Debug, Clone)]
pub struct RespMetrics {
    /// In the order of the labels given to [`RespMetrics::register`].
    pub commands: Vec<IntCounter>,
    pub connections: IntGauge,
    pub refused_connections: IntCounter,
    pub protocol_errors: IntCounter,
    /// Connections closed before they authenticated: their time ran out.
    pub auth_timeouts: IntCounter,
    /// Connections closed before they authenticated: their slot went to a newer connection.
    pub evicted: IntCounter,
}

impl RespMetrics {
    pub fn register(registry: &Registry, commands: &[&str]) -> Result<Self, prometheus::Error> {
        let by_command = IntCounterVec::new(
            Opts::new(
                "kv_reader_resp_commands_total",
                "Commands received on the Redis-protocol port, by command",
            ),
            &["command"],
        )?;
        let unauthenticated = IntCounterVec::new(
            Opts::new(
                "kv_reader_resp_unauthenticated_closed_total",
                "Connections closed before a successful AUTH, by reason: auth_timeout \
                 (KV_API_RESP_AUTH_TIMEOUT_MS) or evicted (the port was full)",
            ),
            &["reason"],
        )?;
        let metrics = Self {
            commands: commands
                .iter()
                .map(|command| by_command.with_label_values(&[*command]))
                .collect(),
            connections: IntGauge::new(
                "kv_reader_resp_connections",
                "Connections open on the Redis-protocol port",
            )?,
            refused_connections: IntCounter::new(
                "kv_reader_resp_refused_connections_total",
                "Connections refused because KV_API_RESP_MAX_CONNECTIONS were open",
            )?,
            protocol_errors: IntCounter::new(
                "kv_reader_resp_protocol_errors_total",
                "Connections closed for input that is not the Redis protocol or over its limits",
            )?,
            auth_timeouts: unauthenticated.with_label_values(&["auth_timeout"]),
            evicted: unauthenticated.with_label_values(&["evicted"]),
        };
        registry.register(Box::new(by_command))?;
        registry.register(Box::new(unauthenticated))?;
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.refused_connections.clone()))?;
        registry.register(Box::new(metrics.protocol_errors.clone()))?;
        Ok(metrics)
    }
}
