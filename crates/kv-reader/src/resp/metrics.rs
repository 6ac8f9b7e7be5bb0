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
        };
        registry.register(Box::new(by_command))?;
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.refused_connections.clone()))?;
        registry.register(Box::new(metrics.protocol_errors.clone()))?;
        Ok(metrics)
    }
}
