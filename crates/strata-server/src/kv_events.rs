//! The KV-event publisher: vLLM's `--kv-events-config`, its ZMQ wire
//! format and its replay socket, so llm-d's precise prefix-cache scorer
//! (and Dynamo's router) can index what each strata engine holds.
//!
//! The engine thread hands each step's events ([`KvCacheEvent`]) to
//! [`KvEventSender::send`], which never blocks: a full queue drops the
//! batch and counts it. The publisher thread numbers the batches (8-byte
//! big-endian sequence, from 0, +1 per batch), encodes them ([`wire`]) and
//! sends `[topic, seq, payload]` on a ZMQ PUB socket, which binds when the
//! endpoint has `*` (vLLM's rule; `*` means every interface) and connects
//! otherwise (retrying until the subscriber is up). It keeps the last
//! `buffer_steps` batches for the replay ROUTER socket: a DEALER sends
//! `["", start_seq]` and gets `["", topic, seq, payload]` for every kept
//! batch from `start_seq` on, then `["", topic, 2^64-1, ""]`.

pub mod wire;

use std::collections::VecDeque;

use bytes::Bytes;
use serde::Deserialize;
use strata_core::kv::KvEventBatch;
pub use strata_metrics::KvEventCounters;
use tokio::sync::mpsc;
use zeromq::{PubSocket, RouterSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

pub use wire::EventFormat;

/// The sequence number that ends a replay.
pub const END_OF_REPLAY: u64 = u64::MAX;

/// The PUB socket's queue per subscriber (messages); vLLM's `hwm` default.
const PUB_QUEUE: usize = 100_000;

/// vLLM's `KVEventsConfig` (JSON of `--kv-events-config`), with its
/// defaults, plus strata's `format`. Unknown fields are refused.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KvEventsConfig {
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    /// `zmq`, or `null` for none; unset: `zmq` when events are enabled.
    #[serde(default)]
    pub publisher: Option<String>,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    #[serde(default)]
    pub replay_endpoint: Option<String>,
    /// Batches kept for replay.
    #[serde(default = "default_buffer_steps")]
    pub buffer_steps: usize,
    /// The PUB socket's high-water mark (messages per subscriber).
    #[serde(default = "default_queue")]
    pub hwm: usize,
    /// Batches waiting for the publisher thread beyond which new ones are
    /// dropped (and counted).
    #[serde(default = "default_queue")]
    pub max_queue_size: usize,
    /// The first frame of every message; llm-d's guides use
    /// `kv@<pod-ip>:<port>@<model>`.
    #[serde(default)]
    pub topic: String,
    /// strata's: `map` (vLLM's current events, tagged maps) or `array`
    /// (positional, vLLM before its #42892; older llm-d reads only these).
    #[serde(default)]
    pub format: EventFormat,
}

fn default_endpoint() -> String {
    "tcp://*:5557".into()
}

fn default_buffer_steps() -> usize {
    10_000
}

fn default_queue() -> usize {
    100_000
}

impl KvEventsConfig {
    /// Parses and checks `--kv-events-config`. `Ok(None)`: no publishing.
    pub fn parse(json: &str) -> Result<Option<Self>, String> {
        let config: Self =
            serde_json::from_str(json).map_err(|e| format!("--kv-events-config: {e}"))?;
        let publisher = config.publisher.as_deref().unwrap_or(if config.enable_kv_cache_events {
            "zmq"
        } else {
            "null"
        });
        match publisher {
            "null" => return Ok(None),
            "zmq" if !config.enable_kv_cache_events => {
                return Err(
                    "--kv-events-config: publisher zmq needs enable_kv_cache_events: true".into()
                )
            }
            "zmq" => {}
            other => {
                return Err(format!(
                    "--kv-events-config: publisher {other:?} is not supported (zmq or null)"
                ))
            }
        }
        if config.hwm != PUB_QUEUE {
            return Err(format!(
                "--kv-events-config: hwm {}: strata's PUB socket queues {PUB_QUEUE} messages per subscriber (vLLM's default), only that value is accepted",
                config.hwm
            ));
        }
        if config.max_queue_size == 0 {
            return Err("--kv-events-config: max_queue_size must be at least 1".into());
        }
        pub_target(&config.endpoint)?;
        if let Some(r) = &config.replay_endpoint {
            tcp_address(r)?;
        }
        Ok(Some(config))
    }
}

/// Where the PUB socket goes: `Bind(addr)` when the endpoint has `*`
/// (every interface) or an unspecified address, else `Connect(endpoint)`.
#[derive(Debug, PartialEq, Eq)]
enum PubTarget {
    Bind(String),
    Connect(String),
}

fn pub_target(endpoint: &str) -> Result<PubTarget, String> {
    let addr = tcp_address(endpoint)?;
    let host = addr.trim_start_matches("tcp://").rsplit_once(':').map_or("", |(h, _)| h);
    Ok(if matches!(host, "0.0.0.0" | "[::]") {
        PubTarget::Bind(addr)
    } else {
        PubTarget::Connect(addr)
    })
}

/// `tcp://HOST:PORT` as the crate wants it, with `*` as `0.0.0.0`.
fn tcp_address(endpoint: &str) -> Result<String, String> {
    let rest = endpoint.strip_prefix("tcp://").ok_or_else(|| {
        format!("--kv-events-config: endpoint {endpoint:?}: only tcp:// endpoints are supported")
    })?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("--kv-events-config: endpoint {endpoint:?} has no port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("--kv-events-config: endpoint {endpoint:?}: bad port {port:?}"))?;
    let host = if host == "*" { "0.0.0.0" } else { host };
    Ok(format!("tcp://{host}:{port}"))
}

/// The engine thread's end: cheap, never blocks.
#[derive(Debug)]
pub struct KvEventSender {
    tx: mpsc::Sender<(f64, KvEventBatch)>,
    counters: KvEventCounters,
    /// Published batches, emptied, for the engine to record into again
    /// (buffers freed on another thread would be allocated anew each step).
    spares: std::sync::mpsc::Receiver<KvEventBatch>,
}

impl KvEventSender {
    /// Queues one step's events (none: nothing sent). `ts` is the wall
    /// clock, seconds since the Unix epoch.
    pub fn send(&self, ts: f64, events: KvEventBatch) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        // Counted before the send, so the publisher's decrement never
        // comes first.
        self.counters.queued_batches.inc();
        if self.tx.try_send((ts, events)).is_err() {
            self.counters.queued_batches.dec();
            self.counters.dropped_batches.inc();
            self.counters.dropped_events.inc_by(n);
        }
    }

    /// An emptied batch the publisher is done with, if any (for
    /// `EngineCore::recycle_kv_events`).
    pub fn spare(&self) -> Option<KvEventBatch> {
        self.spares.try_recv().ok()
    }

    pub fn counters(&self) -> &KvEventCounters {
        &self.counters
    }
}

/// Starts the publisher thread; returns once its sockets are bound (an
/// address in use is an error here, at start-up, not a silent loss).
/// `counters` are the metrics' series (`EngineMetrics::kv_event_counters`).
pub fn start(config: KvEventsConfig, counters: KvEventCounters) -> Result<KvEventSender, String> {
    let (tx, rx) = mpsc::channel(config.max_queue_size);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (spare_tx, spares) = std::sync::mpsc::sync_channel(2);
    let thread_counters = counters.clone();
    std::thread::Builder::new()
        .name("strata-kv-events".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("KV events: starting a runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(publish(config, rx, spare_tx, thread_counters, ready_tx));
        })
        .map_err(|e| format!("KV events: starting the publisher thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "KV events: the publisher thread ended at start-up".to_string())??;
    Ok(KvEventSender { tx, counters, spares })
}

/// Kept batches, oldest first, for replay.
struct Ring {
    batches: VecDeque<(u64, Bytes)>,
    capacity: usize,
}

impl Ring {
    fn push(&mut self, seq: u64, payload: Bytes) {
        if self.capacity == 0 {
            return;
        }
        if self.batches.len() == self.capacity {
            self.batches.pop_front();
        }
        self.batches.push_back((seq, payload));
    }
}

async fn publish(
    config: KvEventsConfig,
    rx: mpsc::Receiver<(f64, KvEventBatch)>,
    spares: std::sync::mpsc::SyncSender<KvEventBatch>,
    counters: KvEventCounters,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut options = SocketOptions::default();
    options.no_connect_timeout();
    let mut socket = PubSocket::with_options(options);
    let target = pub_target(&config.endpoint).expect("invariant: checked by KvEventsConfig::parse");
    if let PubTarget::Bind(addr) = &target {
        if let Err(e) = socket.bind(addr).await {
            let _ = ready.send(Err(format!("KV events: binding {}: {e}", config.endpoint)));
            return;
        }
    }
    let mut replay = match &config.replay_endpoint {
        Some(endpoint) => {
            let mut router = RouterSocket::new();
            let addr = tcp_address(endpoint).expect("invariant: checked by KvEventsConfig::parse");
            if let Err(e) = router.bind(&addr).await {
                let _ = ready.send(Err(format!("KV events: binding replay {endpoint}: {e}")));
                return;
            }
            Some(router)
        }
        None => None,
    };
    let _ = ready.send(Ok(()));
    tracing::info!(
        "publishing KV events on {} ({:?}), topic {:?}{}",
        config.endpoint,
        config.format,
        config.topic,
        config.replay_endpoint.as_ref().map_or(String::new(), |r| format!(", replay on {r}"))
    );
    let topic = Bytes::from(config.topic.clone().into_bytes());
    let mut ring = Ring { batches: VecDeque::new(), capacity: config.buffer_steps };
    let mut seq: u64 = 0;
    let mut inbox = Inbox { rx, empty_polls: 0 };
    // Every batch, sent or not: encoded, its buffers back to the engine
    // (emptied: it records its next steps into them; the engine may be
    // gone, no matter), numbered and kept for replay. Returns its number,
    // payload and number of events.
    let take = |ts: f64, mut events: KvEventBatch, ring: &mut Ring, seq: &mut u64| {
        let payload = Bytes::from(wire::encode_batch(ts, &events, config.format));
        let num_events = events.len() as u64;
        events.clear();
        let _ = spares.try_send(events);
        counters.queued_batches.dec();
        ring.push(*seq, payload.clone());
        *seq += 1;
        (*seq - 1, payload, num_events)
    };
    // Connecting: retried until the subscriber's side is up; batches made
    // meanwhile are numbered and kept for replay (a PUB without peers
    // drops them, as ZMQ does).
    if let PubTarget::Connect(addr) = &target {
        let connect = socket.connect(addr);
        tokio::pin!(connect);
        loop {
            tokio::select! {
                r = &mut connect => {
                    if let Err(e) = r {
                        tracing::error!("KV events: connecting to {}: {e}; events are only kept for replay", config.endpoint);
                    }
                    break;
                }
                batch = inbox.next() => match batch {
                    Some((ts, events)) => {
                        take(ts, events, &mut ring, &mut seq);
                    }
                    None => return,
                },
                request = recv_replay(&mut replay) => serve_replay(&mut replay, request, &topic, &ring).await,
            }
        }
    }
    loop {
        tokio::select! {
            batch = inbox.next() => {
                let Some((ts, events)) = batch else { return };
                let (seq, payload, num_events) = take(ts, events, &mut ring, &mut seq);
                let message = ZmqMessage::try_from(vec![
                    topic.clone(),
                    Bytes::copy_from_slice(&seq.to_be_bytes()),
                    payload.clone(),
                ])
                .expect("invariant: three frames make a message");
                // PUB never blocks: a subscriber whose queue is full loses
                // the message (it can replay); no subscriber, nobody does.
                if let Err(e) = socket.send(message).await {
                    tracing::warn!("KV events: sending batch {seq}: {e}");
                }
                counters.published_batches.inc();
                counters.published_events.inc_by(num_events);
            }
            request = recv_replay(&mut replay) => serve_replay(&mut replay, request, &topic, &ring).await,
        }
    }
}

/// While batches keep coming the publisher looks for them every [`POLL`]
/// instead of being woken by each: waking a thread on another core costs
/// the sender tens of microseconds per wake on a VM, which would land on
/// the engine thread every step (benches/kv_events.rs measures it). After
/// [`IDLE_POLLS`] empty looks it waits to be woken, so an idle engine
/// costs nothing. Events reach subscribers at most one poll later.
const POLL: std::time::Duration = std::time::Duration::from_millis(1);
const IDLE_POLLS: u32 = 100;

struct Inbox {
    rx: mpsc::Receiver<(f64, KvEventBatch)>,
    empty_polls: u32,
}

impl Inbox {
    /// The next batch; `None` once the engine's side is gone. Cancel-safe
    /// (the publisher selects it against replay requests).
    async fn next(&mut self) -> Option<(f64, KvEventBatch)> {
        use mpsc::error::TryRecvError;
        loop {
            match self.rx.try_recv() {
                Ok(batch) => {
                    self.empty_polls = 0;
                    return Some(batch);
                }
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) if self.empty_polls >= IDLE_POLLS => {
                    let batch = self.rx.recv().await;
                    self.empty_polls = 0;
                    return batch;
                }
                Err(TryRecvError::Empty) => {
                    self.empty_polls += 1;
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
}

/// The next replay request, or never when there is no replay socket.
async fn recv_replay(replay: &mut Option<RouterSocket>) -> Option<ZmqMessage> {
    match replay {
        Some(router) => router.recv().await.ok(),
        None => std::future::pending().await,
    }
}

/// Answers `[identity, "", start_seq]` with every kept batch from
/// `start_seq` on, then the end marker. Malformed requests are ignored.
async fn serve_replay(
    replay: &mut Option<RouterSocket>,
    request: Option<ZmqMessage>,
    topic: &Bytes,
    ring: &Ring,
) {
    let (Some(router), Some(request)) = (replay.as_mut(), request) else { return };
    let frames = request.into_vec();
    let [identity, _empty, start] = frames.as_slice() else {
        tracing::warn!("KV events: a replay request of {} frames ignored", frames.len());
        return;
    };
    let Ok(start) = <[u8; 8]>::try_from(start.as_ref()).map(u64::from_be_bytes) else {
        tracing::warn!("KV events: a replay request without an 8-byte sequence ignored");
        return;
    };
    let reply = |seq: u64, payload: Bytes| {
        ZmqMessage::try_from(vec![
            identity.clone(),
            Bytes::new(),
            topic.clone(),
            Bytes::copy_from_slice(&seq.to_be_bytes()),
            payload,
        ])
        .expect("invariant: five frames make a message")
    };
    for (seq, payload) in ring.batches.iter().filter(|(s, _)| *s >= start) {
        if router.send(reply(*seq, payload.clone())).await.is_err() {
            return;
        }
    }
    let _ = router.send(reply(END_OF_REPLAY, Bytes::new())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_follows_vllm_defaults_and_refuses_what_strata_cannot_honour() {
        let c = KvEventsConfig::parse(r#"{"enable_kv_cache_events": true}"#).unwrap().unwrap();
        assert_eq!(c.endpoint, "tcp://*:5557");
        assert_eq!((c.buffer_steps, c.hwm, c.max_queue_size), (10_000, 100_000, 100_000));
        assert_eq!(c.topic, "");
        assert_eq!(c.format, EventFormat::Map);
        assert_eq!(KvEventsConfig::parse("{}").unwrap(), None, "off unless enabled");
        let off = r#"{"enable_kv_cache_events": true, "publisher": "null"}"#;
        assert_eq!(KvEventsConfig::parse(off).unwrap(), None);
        for bad in [
            r#"{"enable_kv_cache_events": true, "publisher": "nats"}"#,
            r#"{"enable_kv_cache_events": true, "hwm": 10}"#,
            r#"{"enable_kv_cache_events": true, "endpoint": "ipc:///tmp/x"}"#,
            r#"{"enable_kv_cache_events": true, "endpoint": "tcp://*"}"#,
            r#"{"enable_kv_cache_events": true, "topik": "x"}"#,
            r#"{"publisher": "zmq"}"#,
            r#"{"enable_kv_cache_events": true, "format": "cbor"}"#,
        ] {
            assert!(KvEventsConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn star_and_unspecified_addresses_bind_others_connect() {
        assert_eq!(pub_target("tcp://*:5557"), Ok(PubTarget::Bind("tcp://0.0.0.0:5557".into())));
        assert_eq!(pub_target("tcp://[::]:5557"), Ok(PubTarget::Bind("tcp://[::]:5557".into())));
        assert_eq!(
            pub_target("tcp://epp.llm-d.svc:5557"),
            Ok(PubTarget::Connect("tcp://epp.llm-d.svc:5557".into()))
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (tx, mut rx) = mpsc::channel(1);
        let (_spare_tx, spares) = std::sync::mpsc::sync_channel(1);
        let sender = KvEventSender { tx, counters: KvEventCounters::default(), spares };
        let batch = || {
            let mut b = KvEventBatch::default();
            b.cleared();
            b.cleared();
            b
        };
        sender.send(1.0, KvEventBatch::default());
        sender.send(1.0, batch());
        sender.send(2.0, batch());
        let c = sender.counters();
        assert_eq!(c.queued_batches.get(), 1);
        assert_eq!(c.dropped_batches.get(), 1);
        assert_eq!(c.dropped_events.get(), 2);
        assert_eq!(rx.try_recv().unwrap().0, 1.0);
    }

    #[test]
    fn the_ring_keeps_the_newest_batches() {
        let mut ring = Ring { batches: VecDeque::new(), capacity: 2 };
        for s in 0..5 {
            ring.push(s, Bytes::new());
        }
        assert_eq!(ring.batches.iter().map(|b| b.0).collect::<Vec<_>>(), vec![3, 4]);
    }
}
