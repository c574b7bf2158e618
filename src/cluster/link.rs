//! The node's connection to NATS, on a thread of its own: a current-thread tokio
//! runtime that runs the client, the follower, the heartbeats and the controller.
//! The journal's writer thread (a plain thread) hands it appends and blocks for
//! the answer; nothing on an HTTP worker's event loop waits on the network.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;

use crate::channels::sink::{nats_options, nats_target, redacted};
use crate::config::ClusterConfig;

/// The stream's subject for journal messages.
pub fn journal_subject(stream: &str) -> String {
    format!("{stream}.journal")
}

/// The core subject nodes say they are alive on.
pub fn nodes_subject(stream: &str) -> String {
    format!("stockwire.{stream}.nodes")
}

pub struct Link {
    runtime: tokio::runtime::Handle,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub stream: String,
    pub subject: String,
    /// The server's `max_payload` less room for headers: a journal part's limit.
    pub part_bytes: usize,
    /// Stops the runtime's thread when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Why a stream append did not land.
#[derive(Debug)]
pub enum AppendFailure {
    /// The stream's last sequence is not the one this node expected: another
    /// node has written since (it took over). This node must step down.
    Fenced(String),
    /// No acknowledgement within the append timeout.
    Unavailable(String),
}

impl Link {
    /// Starts the thread, connects (waiting up to `wait`) and makes sure the
    /// stream exists with `config.replicas` replicas.
    pub fn start(config: &ClusterConfig, wait: Duration) -> Result<Link, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("cluster".to_string())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(format!("cluster runtime: {error}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async move {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| format!("cluster thread: {e}"))?;
        let runtime = ready_rx
            .recv()
            .map_err(|_| "cluster thread did not start".to_string())??;
        let target = nats_target(&config.url)?;
        let shown = redacted(&config.url);
        let stream_name = config.stream.clone();
        let subject = journal_subject(&config.stream);
        let replicas = config.replicas;
        let timeout = Duration::from_millis(config.append_timeout_ms);
        let connect = async move {
            let client = nats_options(
                "stockwire-cluster",
                target.auth,
                Duration::from_secs(2),
                Duration::from_secs(5),
            )
            // Started before the servers: it connects once they are up.
            .retry_on_initial_connect()
            .connect(target.servers)
            .await
            .map_err(|e| format!("nats connect {shown}: {e}"))?;
            let js = jetstream::context::ContextBuilder::new()
                .timeout(Duration::from_secs(5))
                .ack_timeout(timeout.min(Duration::from_secs(5)))
                .build(client.clone());
            // A stream's creation is retried through a leader election.
            let deadline = Instant::now() + wait;
            loop {
                let created = js
                    .get_or_create_stream(stream::Config {
                        name: stream_name.clone(),
                        subjects: vec![journal_subject(&stream_name)],
                        num_replicas: replicas,
                        storage: stream::StorageType::File,
                        // Never drop a message to make room: the owner purges what
                        // every node has applied (`stream_keep`).
                        discard: stream::DiscardPolicy::New,
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(mut found) => {
                        let info = found
                            .info()
                            .await
                            .map_err(|e| format!("stream {stream_name}: {e}"))?;
                        if info.config.num_replicas != replicas {
                            tracing::warn!(
                                stream = %stream_name,
                                replicas = info.config.num_replicas,
                                configured = replicas,
                                "the journal stream exists with another replica count; keeping it"
                            );
                        }
                        break;
                    }
                    Err(error) if Instant::now() < deadline => {
                        tracing::warn!(%error, "journal stream not available yet; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(error) => return Err(format!("journal stream {stream_name}: {error}")),
                }
            }
            let max_payload = client.server_info().max_payload.max(64 * 1024);
            Ok::<_, String>((client, js, max_payload))
        };
        let (client, js, max_payload) = block_on(&runtime, connect, wait).ok_or_else(|| {
            format!("nats {}: no answer within {wait:?}", redacted(&config.url))
        })??;
        Ok(Link {
            runtime,
            client,
            js,
            stream: config.stream.clone(),
            subject,
            part_bytes: max_payload.saturating_sub(4096).max(16 * 1024),
            _stop: stop_tx,
        })
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Runs `future` on the link's thread and waits for it from this one (any
    /// thread but the link's own; an HTTP worker must not call it).
    pub fn block_on<F>(&self, future: F, wait: Duration) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        block_on(&self.runtime, future, wait)
    }
}

fn block_on<F>(runtime: &tokio::runtime::Handle, future: F, wait: Duration) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv_timeout(wait).ok()
}

/// Appends one message expecting the stream's last sequence to be `expected`,
/// retrying (the same message id, so a retry of a write that landed is answered
/// as a duplicate with its sequence) until `deadline`. The new last sequence.
pub async fn append(
    js: jetstream::Context,
    subject: String,
    mut headers: HeaderMap,
    payload: bytes::Bytes,
    expected: u64,
    msg_id: String,
    deadline: Instant,
) -> Result<u64, AppendFailure> {
    use async_nats::jetstream::context::PublishErrorKind;
    headers.insert("Nats-Expected-Last-Sequence", expected.to_string().as_str());
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    let mut wait = Duration::from_millis(20);
    loop {
        let outcome = match js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(error) => Err(error),
        };
        let error = match outcome {
            Ok(ack) => return Ok(ack.sequence),
            Err(error) => error,
        };
        if error.kind() == PublishErrorKind::WrongLastSequence {
            return Err(AppendFailure::Fenced(error.to_string()));
        }
        if error.kind() == PublishErrorKind::MaxPayloadExceeded {
            return Err(AppendFailure::Unavailable(error.to_string()));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(AppendFailure::Unavailable(error.to_string()));
        }
        tracing::warn!(%error, "journal stream append failed; retrying");
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = (wait * 2).min(Duration::from_millis(500));
    }
}
