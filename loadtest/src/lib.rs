//! The library half of `loadtest`: the oracles the integration tests share, the chaos run
//! (also an integration test), the soak run (`soak`) and the helpers their scenarios share.

pub mod chaos;
pub mod harness;
pub mod oracle;
pub mod soak;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// Creates topics of (name, partitions).
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for (t, p) in topics {
        for r in admin.create_topics([&NewTopic::new(t, *p, TopicReplication::Fixed(1))], &opts).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
    }
    Ok(())
}
