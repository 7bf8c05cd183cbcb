//! Instance ids are unique in the group: at start an instance takes its id in the bucket
//! `<prefix>_instances` (an atomic create) and keeps it with a heartbeat; the entry lapses
//! [`LEASE`] after the last one. An id held by another live process (another host, or
//! another data directory) stops the start; the same instance restarted (same host, same
//! audit directory) takes its id back at once. Its block of the issuer STANs is held the
//! same way (`stan_block.<n>`), so two instances never hand an issuer the same STANs.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use crate::{connect, ClusterConfig, ClusterError};

/// How long an id is held without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Who holds an id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// The instance id.
    #[serde(default)]
    pub instance: String,
    /// The host name.
    pub host: String,
    /// The audit directory.
    pub dir: String,
    /// The process.
    pub pid: u32,
}

impl Holder {
    /// This process, keeping the log in `dir`.
    pub fn this(dir: &Path) -> Holder {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Holder {
            instance: String::new(),
            host,
            dir: dir.display().to_string(),
            pid: std::process::id(),
        }
    }

    fn same_instance(&self, other: &Holder) -> bool {
        self.host == other.host && self.dir == other.dir
    }
}

/// The id and the STAN block taken: keep them with [`Lease::keep`].
#[derive(Debug)]
pub struct Lease {
    js: jetstream::Context,
    bucket: String,
    replicas: usize,
    store: kv::Store,
    /// Each key held (the id, the STAN block) and its revision.
    held: Vec<(String, u64)>,
    holder: Holder,
}

/// The bucket the ids are held in (made when missing: it is in memory, and a broker
/// restarted has lost it).
async fn instances_bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, switchyard_router::shared::Unreachable> {
    crate::shared::bucket(
        js,
        name,
        LEASE,
        replicas,
        jetstream::stream::StorageType::Memory,
    )
    .await
}

/// The bucket the group's ids are held in.
pub(crate) fn bucket_name(config: &ClusterConfig) -> String {
    format!("{}_instances", config.audit_stream.to_ascii_lowercase())
}

/// The instance id a key of the bucket is (none: a STAN block's).
pub(crate) fn instance_of_key(key: &str) -> Option<&str> {
    (!key.contains('.')).then_some(key)
}

/// The key a STAN block is held by (a dot: no instance id has one).
fn stan_block_key(block: u32) -> String {
    format!("stan_block.{block}")
}

/// Take `config.instance` and its STAN block for `holder`; `Err(Config)` when another live
/// instance holds either.
pub async fn take(config: &ClusterConfig, holder: Holder) -> Result<Lease, ClusterError> {
    let broker = |what: &'static str| move |e: String| ClusterError::Broker { what, reason: e };
    let client = connect(config).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(config.ack_timeout)
        .build(client);
    let bucket = bucket_name(config);
    let store = instances_bucket(&js, &bucket, config.replicas)
        .await
        .map_err(|e| broker("instances bucket")(e.0))?;
    let holder = Holder {
        instance: config.instance.clone(),
        ..holder
    };
    let value =
        Bytes::from(serde_json::to_vec(&holder).map_err(|e| broker("instances")(e.to_string()))?);
    let mut keys = vec![(
        config.instance.clone(),
        format!("instance {:?}", config.instance),
    )];
    if let Some(block) = config.stan_block {
        keys.push((stan_block_key(block), format!("STAN block {block}")));
    }
    let mut held = Vec::new();
    for (key, what) in keys {
        let revision = match store.create(&key, value.clone()).await {
            Ok(r) => r,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = store
                    .entry(key.clone())
                    .await
                    .map_err(|e| broker("instances")(e.to_string()))?
                    .ok_or_else(|| {
                        broker("instances")("the id's entry vanished; start again".into())
                    })?;
                let other: Holder = serde_json::from_slice(&entry.value)
                    .map_err(|e| broker("instances")(e.to_string()))?;
                if !other.same_instance(&holder) {
                    for (taken, _) in &held {
                        let _ = store.delete(taken).await; // not ours after all
                    }
                    return Err(ClusterError::Config(format!(
                        "{what} is in use by instance {:?} on {} (audit directory {}, pid {}); each instance needs its own id and STAN block",
                        other.instance, other.host, other.dir, other.pid
                    )));
                }
                store
                    .update(&key, value.clone(), entry.revision)
                    .await
                    .map_err(|e| broker("instances")(e.to_string()))?
            }
            Err(e) => return Err(broker("instances")(e.to_string())),
        };
        held.push((key, revision));
    }
    Ok(Lease {
        js,
        bucket,
        replicas: config.replicas,
        store,
        held,
        holder,
    })
}

impl Lease {
    /// Heartbeat until `stop`; a heartbeat that finds a key taken by another holder is
    /// logged as an error (the group has two instances with one id or STAN block).
    pub async fn keep(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = stop.changed() => {
                    for (key, _) in &self.held {
                        let _ = self.store.delete(key).await;
                    }
                    return;
                }
            }
            let Ok(value) = serde_json::to_vec(&self.holder) else {
                return;
            };
            let value = Bytes::from(value);
            for i in 0..self.held.len() {
                let (key, revision) = self.held[i].clone();
                match self.store.update(&key, value.clone(), revision).await {
                    Ok(r) => self.held[i].1 = r,
                    // Lapsed (the broker was away, or restarted without the bucket): take
                    // it again if no one else did.
                    Err(_) => match self.take_again(&key, value.clone()).await {
                        Ok(r) => self.held[i].1 = r,
                        Err(e) => {
                            tracing::error!(instance = %self.holder.instance, key = %key, error = %e, "instance id: heartbeat failed (taken by another instance, or the broker unreachable)")
                        }
                    },
                }
            }
        }
    }

    async fn take_again(&mut self, key: &str, value: Bytes) -> Result<u64, String> {
        if let Ok(store) = instances_bucket(&self.js, &self.bucket, self.replicas).await {
            self.store = store;
        }
        self.store
            .create(key, value)
            .await
            .map_err(|e| e.to_string())
    }
}
