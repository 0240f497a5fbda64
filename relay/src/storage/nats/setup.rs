//! Connecting to the cluster and setting up what every node shares: the KV buckets, the
//! streams and the object stores, created when missing and their limits brought to this
//! node's configuration; one replica when the servers form no cluster.

use super::*;

impl NatsStorage {
    /// Connects to the NATS servers at `url` (one URL or several, comma-separated) and
    /// creates (or checks) the buckets and the stream. Waits up to 30 s for JetStream to
    /// be available; fails at once when no server answers.
    pub async fn connect(url: &str, options: &ClusterOptions) -> Result<Self, StorageError> {
        let shown = redact_url(url);
        let servers = url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| backend(&format!("--cluster {shown}"), e))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("letstalk-relay {}", options.node_id))
            .connection_timeout(Duration::from_secs(5))
            // A node outlives any one NATS server: it reconnects forever, to any of the
            // cluster's servers (the client learns them from the one it reached).
            .max_reconnects(None)
            .connect(servers)
            .await
            .map_err(|e| backend(&format!("cannot reach the cluster at {shown}"), e))?;
        let js = jetstream::new(client.clone());
        let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
        let mut replicas = 3;
        loop {
            match Self::setup(&client, &js, options, replicas).await {
                Ok(s) => return Ok(s),
                Err(Setup::NotClustered) if replicas > 1 => replicas = 1,
                Err(Setup::NotClustered) => {
                    return Err(StorageError::Backend("JetStream refused one replica".into()));
                }
                Err(Setup::Failed(e)) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(backend(&format!("JetStream at {shown}"), e));
                    }
                    tracing::info!(error = %e, "JetStream not ready yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn setup(
        client: &async_nats::Client,
        js: &jetstream::Context,
        options: &ClusterOptions,
        replicas: usize,
    ) -> Result<Self, Setup> {
        let accounts = ensure_kv(js, ACCOUNTS, replicas).await?;
        let directory = ensure_kv(js, DIRECTORY, replicas).await?;
        let watches = ensure_kv(js, WATCHES, replicas).await?;
        // A rendezvous lives ten minutes: the servers drop its records after that (a
        // read checks its end first, so a record kept a little longer is never seen).
        let links =
            ensure_kv_with(js, LINKS, replicas, Duration::from_millis(LINK_SLOT_TTL_MS)).await?;
        let avatars = ensure_object_store(js, AVATARS, replicas, Duration::ZERO).await?;
        let blobs = ensure_object_store(js, BLOBS, replicas, options.blob_ttl).await?;
        let blob_waiting = ensure_kv_with(js, BLOB_WAITING, replicas, options.blob_ttl).await?;
        let ttl = options.message_ttl;
        let config = stream::Config {
            name: MAILBOX_STREAM.into(),
            subjects: vec![format!("{MAILBOX_PREFIX}.>")],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            retention: stream::RetentionPolicy::Limits,
            max_age: ttl,
            // One subject per (recipient, sender): the cap is one sender's share.
            max_messages_per_subject: i64::try_from(options.mailbox_max_messages.div_ceil(4))
                .unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            duplicate_window: DEDUPE_WINDOW.min(ttl),
            allow_direct: false,
            ..Default::default()
        };
        let mailbox = ensure_stream(js, config).await?;
        let prekeys = ensure_stream(
            js,
            stream::Config {
                name: PREKEYS_STREAM.into(),
                subjects: vec![format!("{PREKEYS_PREFIX}.>")],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                // An upload retransmitted within the hour is not stored twice.
                duplicate_window: DEDUPE_WINDOW,
                allow_direct: false,
                ..Default::default()
            },
        )
        .await?;
        let reports = ensure_stream(
            js,
            stream::Config {
                name: REPORTS_STREAM.into(),
                subjects: vec![format!("{REPORTS_PREFIX}.>")],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                max_age: options.report_ttl,
                duplicate_window: DEDUPE_WINDOW.min(options.report_ttl),
                allow_direct: false,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client: client.clone(),
                js: js.clone(),
                accounts,
                directory,
                watches,
                links,
                avatars,
                blobs,
                blob_waiting,
                mailbox,
                prekeys,
                reports,
                replicas,
            }),
        })
    }
}

/// Why setting up failed: a single server (retry with one replica) or anything else.
enum Setup {
    NotClustered,
    Failed(String),
}

impl Setup {
    fn from_error(e: impl std::fmt::Display) -> Self {
        let text = e.to_string();
        if text.contains("replicas > 1 not supported") || text.contains("non-clustered") {
            Self::NotClustered
        } else {
            Self::Failed(text)
        }
    }
}

/// A KV bucket whose reads go to the leader: the stream is made here rather than by
/// `create_key_value`, which turns on direct reads that a lagging replica may answer.
async fn ensure_kv(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, Setup> {
    ensure_kv_with(js, bucket, replicas, Duration::ZERO).await
}

/// [`ensure_kv`] whose records the servers delete `max_age` after they were written
/// (zero: kept).
async fn ensure_kv_with(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, Setup> {
    let config = stream::Config {
        max_age,
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: false,
        max_message_size: -1,
        max_bytes: -1,
        max_messages: -1,
        ..Default::default()
    };
    ensure_stream(js, config).await?;
    js.get_key_value(bucket).await.map_err(Setup::from_error)
}

/// The stream as configured: created when missing, its limits updated when a node
/// starts with other ones (every node of a relay should share its limits).
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, Setup> {
    match js.get_stream(&config.name).await {
        Ok(mut s) => {
            let current = s.info().await.map_err(Setup::from_error)?.config.clone();
            if current.max_age != config.max_age
                || current.max_messages_per_subject != config.max_messages_per_subject
                || current.duplicate_window != config.duplicate_window
            {
                let mut wanted = current;
                wanted.max_age = config.max_age;
                wanted.max_messages_per_subject = config.max_messages_per_subject;
                wanted.duplicate_window = config.duplicate_window;
                js.update_stream(wanted).await.map_err(Setup::from_error)?;
                return js.get_stream(&config.name).await.map_err(Setup::from_error);
            }
            Ok(s)
        }
        Err(_) => js.create_stream(config).await.map_err(Setup::from_error),
    }
}

/// Opens object store `bucket`, creating it (`max_age` zero: kept until deleted).
async fn ensure_object_store(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<object_store::ObjectStore, Setup> {
    match js.get_object_store(bucket).await {
        Ok(s) => Ok(s),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.into(),
                storage: stream::StorageType::File,
                num_replicas: replicas,
                max_age,
                ..Default::default()
            })
            .await
            .map_err(Setup::from_error),
    }
}
