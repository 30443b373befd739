//! KV transport over TCP (tokio): the prefill side's server and the decode
//! side's pulls. The engine thread never touches a socket: the server
//! hands pull requests to it through a channel and gets block bytes back;
//! pulls run as tasks and report through a channel.
//!
//! A pull's blocks arrive in order; a failure part-way keeps the blocks
//! already verified (the scheduler recomputes from the first missing one,
//! docs/accounting.md A6).

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use crate::stats::KvTransferFailure;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::wire::{self, Layout, Reader, WireError};

/// Block-sized buffers kept for reuse: a fresh allocation per block costs
/// page faults comparable to the copy itself.
#[derive(Clone, Debug, Default)]
pub struct BufferPool(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

/// Enough for a few 8k-token transfers of a small model in flight.
const MAX_POOLED: usize = 1024;

impl BufferPool {
    pub fn take(&self) -> Vec<u8> {
        self.0.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default()
    }

    pub fn give(&self, mut v: Vec<u8>) {
        if let Ok(mut p) = self.0.lock() {
            if p.len() < MAX_POOLED {
                v.clear();
                p.push(v);
            }
        }
    }
}

/// Handshake and idle limits (a stranger cannot hold a connection open).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Faults a prefill engine injects into what it sends, for tests of the
/// decode side's failure handling (`--kv-transfer-fault`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Close the connection after sending this many blocks of a pull.
    pub drop_after_blocks: Option<u32>,
    /// Flip a byte in the block at this position of a pull.
    pub corrupt_block: Option<u32>,
    /// Wait this long before answering a pull.
    pub delay: Option<Duration>,
}

impl Fault {
    /// `drop-after=N,corrupt=N,delay-ms=N` (any subset).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut f = Fault::default();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) =
                part.split_once('=').ok_or_else(|| format!("`{part}`: expected key=value"))?;
            let n: u64 = v.parse().map_err(|_| format!("`{part}`: not a number"))?;
            match k {
                "drop-after" => f.drop_after_blocks = Some(n as u32),
                "corrupt" => f.corrupt_block = Some(n as u32),
                "delay-ms" => f.delay = Some(Duration::from_millis(n)),
                _ => return Err(format!("unknown fault `{k}` (drop-after, corrupt, delay-ms)")),
            }
        }
        Ok(f)
    }
}

/// What the server asks of the engine thread.
#[derive(Debug)]
pub enum EngineJob {
    /// The bytes of these blocks of a lease (by position in the lease), or
    /// an error code.
    Pull {
        transfer_id: String,
        indices: Vec<u32>,
        /// Each block as soon as it is copied out (so sending starts while
        /// the rest are copied), or one error code.
        reply: tokio::sync::mpsc::UnboundedSender<Result<Vec<u8>, u8>>,
    },
    /// The decode side will not pull: end the lease.
    Release { transfer_id: String },
}

/// What the server reports of each pull it served (for stats).
#[derive(Debug)]
pub enum SendEvent {
    Sent { bytes: u64, seconds: f64, num_blocks: u32 },
    Failed(KvTransferFailure),
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub layout: Layout,
    pub secret: Option<String>,
    pub fault: Fault,
    /// Where sent blocks' buffers go back to.
    pub buffers: BufferPool,
}

/// Accepts connections until the listener fails or the engine side goes.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    jobs: std_mpsc::Sender<EngineJob>,
    events: std_mpsc::Sender<SendEvent>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let _ = stream.set_nodelay(true);
        let (config, jobs, events) = (config.clone(), jobs.clone(), events.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &config, &jobs, &events).await {
                tracing::debug!("KV transfer connection ended: {e}");
            }
        });
    }
}

async fn handle(
    stream: TcpStream,
    config: &ServerConfig,
    jobs: &std_mpsc::Sender<EngineJob>,
    events: &std_mpsc::Sender<SendEvent>,
) -> Result<(), WireError> {
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(64 << 10, r);
    let mut w = BufWriter::with_capacity(256 << 10, w);
    let server_nonce = wire::nonce();
    wire::write_frame(
        &mut w,
        wire::CHALLENGE,
        &[wire::MAGIC, &wire::VERSION.to_le_bytes(), &server_nonce],
    )
    .await?;
    w.flush().await?;
    let mut buf = Vec::new();
    let kind = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        wire::read_frame(&mut r, &mut buf, wire::MAX_CONTROL),
    )
    .await
    .map_err(|_| WireError::Malformed("handshake timed out"))??;
    if kind != wire::HELLO {
        return Err(WireError::Malformed("expected Hello"));
    }
    let mut rd = Reader(&buf);
    let layout_bytes = rd.0.get(..16).map(<[u8]>::to_vec).unwrap_or_default();
    let theirs = Layout::decode(&mut rd)?;
    let client_nonce: [u8; 16] = rd.bytes(16)?.try_into().expect("16 bytes");
    let their_mac = rd.bytes(32)?.to_vec();
    let secret = config.secret.as_deref();
    let expected =
        wire::mac(secret, &[b"strata-pd hello", &server_nonce, &client_nonce, &layout_bytes]);
    let refusal = if secret.is_some() && !wire::mac_eq(&expected, &their_mac) {
        let why = "wrong or missing KV transfer secret".to_owned();
        Some((KvTransferFailure::Auth, wire::CODE_AUTH, why))
    } else {
        config
            .layout
            .mismatch(&theirs)
            .map(|why| (KvTransferFailure::Handshake, wire::CODE_HANDSHAKE, why))
    };
    if let Some((reason, code, why)) = refusal {
        let _ = events.send(SendEvent::Failed(reason));
        wire::write_frame(&mut w, wire::REFUSE, &[&wire::coded(code, &why)]).await?;
        w.flush().await?;
        return Ok(());
    }
    let ours = wire::mac(secret, &[b"strata-pd welcome", &client_nonce, &server_nonce]);
    wire::write_frame(&mut w, wire::WELCOME, &[&ours]).await?;
    w.flush().await?;

    loop {
        let kind = match tokio::time::timeout(
            IDLE_TIMEOUT,
            wire::read_frame(&mut r, &mut buf, wire::MAX_CONTROL),
        )
        .await
        {
            Ok(Ok(k)) => k,
            Ok(Err(WireError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let mut rd = Reader(&buf);
        match kind {
            wire::RELEASE => {
                let transfer_id = rd.string()?;
                let _ = jobs.send(EngineJob::Release { transfer_id });
                wire::write_frame(&mut w, wire::END, &[]).await?;
                w.flush().await?;
            }
            wire::PULL => {
                let transfer_id = rd.string()?;
                let n = rd.u32()? as usize;
                if n > (wire::MAX_CONTROL - 64) / 4 {
                    return Err(WireError::Malformed("too many blocks in one pull"));
                }
                let indices = (0..n).map(|_| rd.u32()).collect::<Result<Vec<_>, _>>()?;
                if let Some(d) = config.fault.delay {
                    tokio::time::sleep(d).await;
                }
                let start = Instant::now();
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                if jobs
                    .send(EngineJob::Pull { transfer_id, indices: indices.clone(), reply: tx })
                    .is_err()
                {
                    return Ok(());
                }
                let first = match rx.recv().await {
                    Some(Ok(block)) => block,
                    Some(Err(code)) => {
                        let why = if code == wire::CODE_EXPIRED {
                            "lease expired or unknown"
                        } else {
                            "invalid pull"
                        };
                        wire::write_frame(&mut w, wire::ERROR, &[&wire::coded(code, why)]).await?;
                        w.flush().await?;
                        continue;
                    }
                    None => return Ok(()),
                };
                let mut bytes = 0u64;
                let mut next = Some(first);
                for (pos, index) in indices.iter().enumerate() {
                    let Some(mut data) = next.take() else { return Ok(()) };
                    if pos + 1 < indices.len() {
                        next = match rx.recv().await {
                            Some(Ok(block)) => Some(block),
                            _ => None,
                        };
                    }
                    if config.fault.drop_after_blocks == Some(pos as u32) {
                        let _ = events.send(SendEvent::Failed(KvTransferFailure::Transport));
                        // What was sent arrives; then the connection dies.
                        w.flush().await?;
                        return Ok(());
                    }
                    let crc = crc32fast::hash(&data);
                    if config.fault.corrupt_block == Some(pos as u32) && !data.is_empty() {
                        data[0] ^= 0xff;
                    }
                    wire::write_frame(
                        &mut w,
                        wire::BLOCK,
                        &[&index.to_le_bytes(), &crc.to_le_bytes(), &data],
                    )
                    .await?;
                    bytes += data.len() as u64;
                    config.buffers.give(data);
                }
                wire::write_frame(&mut w, wire::END, &[]).await?;
                w.flush().await?;
                let _ = events.send(SendEvent::Sent {
                    bytes,
                    seconds: start.elapsed().as_secs_f64(),
                    num_blocks: indices.len() as u32,
                });
            }
            _ => return Err(WireError::Malformed("unexpected frame")),
        }
    }
}

/// Where to pull from and what.
#[derive(Clone, Debug)]
pub struct PullSpec {
    pub addr: String,
    pub transfer_id: String,
    /// Positions in the lease's block list.
    pub indices: Vec<u32>,
}

/// One received block: its whole frame payload (index and CRC first), so
/// no copy is made to strip them.
#[derive(Debug)]
pub struct Block(pub Vec<u8>);

impl Block {
    pub fn data(&self) -> &[u8] {
        &self.0[8..]
    }
}

#[derive(Debug)]
pub struct PullResult {
    /// Verified blocks handed to `on_block`, in order, from the first
    /// index on.
    pub num_blocks: usize,
    pub error: Option<KvTransferFailure>,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub layout: Layout,
    pub secret: Option<String>,
    pub timeout: Duration,
    pub buffers: BufferPool,
}

fn classify(e: &WireError) -> KvTransferFailure {
    match e {
        WireError::Io(_) => KvTransferFailure::Transport,
        WireError::TooLarge(_) | WireError::Malformed(_) => KvTransferFailure::Invalid,
    }
}

/// Connects and completes the handshake.
async fn connect(
    addr: &str,
    config: &ClientConfig,
    buf: &mut Vec<u8>,
) -> Result<
    (BufReader<tokio::net::tcp::OwnedReadHalf>, BufWriter<tokio::net::tcp::OwnedWriteHalf>),
    KvTransferFailure,
> {
    let stream = TcpStream::connect(addr).await.map_err(|_| KvTransferFailure::Transport)?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(256 << 10, r);
    let mut w = BufWriter::with_capacity(64 << 10, w);
    let kind = wire::read_frame(&mut r, buf, wire::MAX_CONTROL).await.map_err(|e| classify(&e))?;
    let mut rd = Reader(buf);
    if kind != wire::CHALLENGE
        || rd.bytes(8).map_err(|e| classify(&e))? != wire::MAGIC
        || rd.u16().map_err(|e| classify(&e))? != wire::VERSION
    {
        return Err(KvTransferFailure::Handshake);
    }
    let server_nonce: [u8; 16] =
        rd.bytes(16).map_err(|e| classify(&e))?.try_into().expect("16 bytes");
    let client_nonce = wire::nonce();
    let mut layout = Vec::new();
    config.layout.encode(&mut layout);
    let secret = config.secret.as_deref();
    let mac = wire::mac(secret, &[b"strata-pd hello", &server_nonce, &client_nonce, &layout]);
    wire::write_frame(&mut w, wire::HELLO, &[&layout, &client_nonce, &mac])
        .await
        .map_err(|_| KvTransferFailure::Transport)?;
    w.flush().await.map_err(|_| KvTransferFailure::Transport)?;
    let kind = wire::read_frame(&mut r, buf, wire::MAX_CONTROL).await.map_err(|e| classify(&e))?;
    match kind {
        wire::WELCOME => {
            let expected = wire::mac(secret, &[b"strata-pd welcome", &client_nonce, &server_nonce]);
            if secret.is_some() && !wire::mac_eq(&expected, buf) {
                // The peer does not know the secret: its KV is not trusted.
                return Err(KvTransferFailure::Auth);
            }
            Ok((r, w))
        }
        wire::REFUSE => {
            let mut rd = Reader(buf);
            let code = rd.bytes(1).map(|b| b[0]).unwrap_or(0);
            let message = rd.string().unwrap_or_default();
            tracing::warn!("KV transfer refused by {addr}: {message}");
            Err(if code == wire::CODE_AUTH {
                KvTransferFailure::Auth
            } else {
                KvTransferFailure::Handshake
            })
        }
        _ => Err(KvTransferFailure::Invalid),
    }
}

/// Pulls blocks; never fails as a whole: what arrived is kept.
/// Each verified block goes to `on_block` (its position in the pull) as it
/// arrives, so the engine can copy it in while the rest are on the wire.
pub async fn pull(
    spec: PullSpec,
    config: ClientConfig,
    mut on_block: impl FnMut(usize, Block),
) -> PullResult {
    let start = Instant::now();
    let mut result = PullResult { num_blocks: 0, error: None, bytes: 0, seconds: 0.0 };
    let bpb = config.layout.bytes_per_block as usize;
    let run = async {
        let mut buf = Vec::new();
        let (mut r, mut w) = connect(&spec.addr, &config, &mut buf).await?;
        let mut payload = Vec::new();
        wire::put_string(&mut payload, &spec.transfer_id);
        payload.extend_from_slice(&(spec.indices.len() as u32).to_le_bytes());
        for i in &spec.indices {
            payload.extend_from_slice(&i.to_le_bytes());
        }
        wire::write_frame(&mut w, wire::PULL, &[&payload])
            .await
            .map_err(|_| KvTransferFailure::Transport)?;
        w.flush().await.map_err(|_| KvTransferFailure::Transport)?;
        loop {
            let mut frame = config.buffers.take();
            let kind =
                wire::read_frame(&mut r, &mut frame, bpb + 16).await.map_err(|e| classify(&e))?;
            match kind {
                wire::BLOCK => {
                    let mut rd = Reader(&frame);
                    let index = rd.u32().map_err(|e| classify(&e))?;
                    let crc = rd.u32().map_err(|e| classify(&e))?;
                    let data = rd.0;
                    let expected = spec.indices.get(result.num_blocks);
                    if expected != Some(&index) || data.len() != bpb || crc32fast::hash(data) != crc
                    {
                        return Err(KvTransferFailure::Invalid);
                    }
                    result.bytes += data.len() as u64;
                    on_block(result.num_blocks, Block(frame));
                    result.num_blocks += 1;
                }
                wire::END if result.num_blocks == spec.indices.len() => return Ok(()),
                wire::END => return Err(KvTransferFailure::Invalid),
                wire::ERROR => {
                    let code = frame.first().copied().unwrap_or(0);
                    return Err(if code == wire::CODE_EXPIRED {
                        KvTransferFailure::LeaseExpired
                    } else {
                        KvTransferFailure::Invalid
                    });
                }
                _ => return Err(KvTransferFailure::Invalid),
            }
        }
    };
    let outcome = match tokio::time::timeout(config.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(KvTransferFailure::Timeout),
    };
    result.error = outcome.err();
    result.seconds = start.elapsed().as_secs_f64();
    result
}

/// Tells the prefill engine to end a lease nobody will pull.
pub async fn release(
    addr: String,
    transfer_id: String,
    config: ClientConfig,
) -> Result<(), KvTransferFailure> {
    let run = async {
        let mut buf = Vec::new();
        let (mut r, mut w) = connect(&addr, &config, &mut buf).await?;
        let mut payload = Vec::new();
        wire::put_string(&mut payload, &transfer_id);
        wire::write_frame(&mut w, wire::RELEASE, &[&payload])
            .await
            .map_err(|_| KvTransferFailure::Transport)?;
        w.flush().await.map_err(|_| KvTransferFailure::Transport)?;
        wire::read_frame(&mut r, &mut buf, wire::MAX_CONTROL).await.map_err(|e| classify(&e))?;
        w.shutdown().await.map_err(|_| KvTransferFailure::Transport)
    };
    tokio::time::timeout(config.timeout, run).await.unwrap_or(Err(KvTransferFailure::Timeout))
}
