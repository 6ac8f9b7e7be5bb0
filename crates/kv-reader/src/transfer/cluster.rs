//! Which Kafka cluster this reader reads, as its brokers name it: a snapshot carries its
//! peer's, and a receiver of another cluster refuses it (a topic of the same name there holds
//! other records).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kv_core::settings::KafkaProperties;

/// How long one ask for the id may take.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a failed ask the next is made.
const ASK_AGAIN: Duration = Duration::from_secs(10);

/// The id once a broker named it; shared by the snapshot route.
#[derive(Debug, Clone, Default)]
pub struct KafkaCluster(Arc<OnceLock<String>>);

impl KafkaCluster {
    /// Asks the brokers in the background, again every 10 s until one names the cluster.
    pub fn learn(kafka: KafkaProperties) -> Self {
        let this = Self::default();
        let slot = this.0.clone();
        tokio::spawn(async move {
            loop {
                let kafka = kafka.clone();
                let asked = tokio::task::spawn_blocking(move || {
                    kv_core::kafka::cluster_id(&kafka, ASK_TIMEOUT)
                })
                .await;
                if let Ok(Some(id)) = asked {
                    let _ = slot.set(id);
                    return;
                }
                tokio::time::sleep(ASK_AGAIN).await;
            }
        });
        this
    }

    pub fn id(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}
