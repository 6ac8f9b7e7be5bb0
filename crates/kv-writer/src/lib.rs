//! kv-writer: the HTTP write gateway that produces key-value writes to Kafka.

pub mod answer;
pub mod app;
pub mod batch;
pub mod body;
pub mod conditional;
pub mod input;
pub mod metrics;
pub mod migrate;
pub(crate) mod outcome_lane;
pub mod producer;
pub mod reports;
pub mod routes;
pub mod settings;
pub mod state;

pub use app::App;
pub use settings::Settings;
