//! The P/D connector: both roles in one pair of halves.
//!
//! Prefill role ([`Role::Prefill`] or `Both`): a request that arrives with
//! `do_remote_decode` and ends normally keeps its blocks under a lease
//! (`delay_free`); its last output carries the params a decode engine
//! needs. The lease ends when it has been pulled `num_pulls` times, when
//! the decode side releases it, or at its deadline (counted as expired);
//! each end frees the blocks through `finished_sending`. A pull after the
//! end gets a clean "expired" answer.
//!
//! Decode role: a request with `do_remote_prefill` is matched for every
//! prompt token but the last, beyond its local prefix hit (only the rest
//! is pulled, A1); its pull runs on the transport's runtime while the
//! request waits in `WaitingForRemoteKv`; the blocks are written into the
//! device pool at the next step boundary. Blocks that did not arrive are
//! reported invalid, and the scheduler's failure policy decides (A5-A8).
//! A request that will never pull (aborted first, or fully hit locally)
//! releases the lease so the prefill engine frees at once (A11).

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use strata_core::connector::{
    ConnectorMeta, ConnectorOutput, ConnectorScheduler, ConnectorStats, ConnectorWorker, LoadSpec,
    RequestFinished,
};
use strata_core::kv::BlockHash;
use strata_core::request::{KvTransferParams, Request};
use strata_core::{
    BlockId, FinishReason, KvBlockIo, PrefillRecord, RequestId, RequestStatus, TokenSource,
};

use crate::stats::{KvTransferDirection, KvTransferFailure, KvTransferRecord, PdStats};

use crate::transport::{
    self, ClientConfig, EngineJob, Fault, PullResult, PullSpec, SendEvent, ServerConfig,
};
use crate::wire::{self, Layout};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Prefill,
    Decode,
    Both,
}

impl Role {
    fn prefills(self) -> bool {
        matches!(self, Self::Prefill | Self::Both)
    }

    fn decodes(self) -> bool {
        matches!(self, Self::Decode | Self::Both)
    }
}

#[derive(Clone, Debug)]
pub struct PdConfig {
    pub role: Role,
    pub engine_id: String,
    /// Where this engine serves KV (port 0: any free port).
    pub listen: SocketAddr,
    /// The host decode engines are told to pull from.
    pub advertise_host: String,
    pub secret: Option<String>,
    pub lease_timeout: Duration,
    pub transfer_timeout: Duration,
    pub layout: Layout,
    pub fault: Fault,
}

#[derive(Debug)]
struct Lease {
    request_id: RequestId,
    block_ids: Vec<BlockId>,
    num_tokens: u32,
    pulls_left: u32,
    deadline: Instant,
}

#[derive(Debug)]
struct Plan {
    spec: PullSpec,
    block_ids: Vec<BlockId>,
    num_tokens: u32,
}

#[derive(Debug)]
struct Inflight {
    block_ids: Vec<BlockId>,
    num_tokens: u32,
}

#[derive(Debug, Default)]
struct Shared {
    leases: FxHashMap<String, Lease>,
    next_lease: u64,
    plans: FxHashMap<RequestId, Plan>,
    inflight: FxHashMap<RequestId, Inflight>,
    /// Decode requests whose pull started (they never release).
    pulled: FxHashSet<RequestId>,
    releases: Vec<(String, String)>,
    pending: ConnectorMeta,
    stats: PdStats,
    out: ConnectorOutput,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub struct PdScheduler {
    shared: Arc<Mutex<Shared>>,
    config: PdConfig,
    port: u16,
}

/// What a pull task reports, in order on one channel (so every block of a
/// pull is seen before its end).
#[derive(Debug)]
enum PullEvent {
    Block(RequestId, usize, transport::Block),
    Done(RequestId, PullResult),
}

pub struct PdWorker {
    shared: Arc<Mutex<Shared>>,
    client: ClientConfig,
    runtime: Option<tokio::runtime::Runtime>,
    jobs: std_mpsc::Receiver<EngineJob>,
    events: std_mpsc::Receiver<SendEvent>,
    pulls_tx: std_mpsc::Sender<PullEvent>,
    pulls: std_mpsc::Receiver<PullEvent>,
    block_size: u32,
}

impl std::fmt::Debug for PdWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdWorker").finish_non_exhaustive()
    }
}

/// Binds the KV port (prefill role) and returns the connector's halves and
/// the bound port.
pub fn open(config: PdConfig) -> std::io::Result<(PdScheduler, PdWorker, u16)> {
    let buffers = transport::BufferPool::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("strata-kv-transfer")
        .enable_all()
        .build()?;
    let (jobs_tx, jobs) = std_mpsc::channel();
    let (events_tx, events) = std_mpsc::channel();
    let mut port = 0;
    if config.role.prefills() {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        port = listener.local_addr()?.port();
        let server = ServerConfig {
            layout: config.layout,
            secret: config.secret.clone(),
            fault: config.fault.clone(),
            buffers: buffers.clone(),
        };
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(transport::serve(listener, server, jobs_tx, events_tx));
        tracing::info!("serving KV transfers on {}:{port}", config.listen.ip());
    }
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (pulls_tx, pulls) = std_mpsc::channel();
    let client = ClientConfig {
        layout: config.layout,
        secret: config.secret.clone(),
        timeout: config.transfer_timeout,
        buffers,
    };
    let block_size = config.layout.block_size;
    Ok((
        PdScheduler { shared: shared.clone(), config, port },
        PdWorker {
            shared,
            client,
            runtime: Some(runtime),
            jobs,
            events,
            pulls_tx,
            pulls,
            block_size,
        },
        port,
    ))
}

/// The remote side of a decode request, if it has a usable one.
fn remote(p: &KvTransferParams) -> Option<(String, &str)> {
    if !p.do_remote_prefill {
        return None;
    }
    let host = p.remote_host.as_deref()?;
    let port = p.remote_port?;
    let id = p.transfer_id.as_deref()?;
    let addr =
        if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    Some((addr, id))
}

impl PdScheduler {
    fn block_size(&self) -> usize {
        self.config.layout.block_size as usize
    }

    /// A decode request's lease that nobody will pull.
    fn release(&self, s: &mut Shared, req: &Request) {
        if s.pulled.remove(&req.id) {
            return;
        }
        if let Some((addr, id)) = req.kv_transfer_params.as_ref().and_then(remote) {
            s.releases.push((addr, id.to_owned()));
        }
    }
}

impl ConnectorScheduler for PdScheduler {
    fn source(&self) -> TokenSource {
        TokenSource::Remote
    }

    fn get_num_new_matched_tokens(&mut self, req: &Request, num_local_hit_tokens: usize) -> usize {
        if !self.config.role.decodes() {
            return 0;
        }
        let Some(p) = &req.kv_transfer_params else { return 0 };
        if remote(p).is_none() {
            return 0;
        }
        let prompt = req.num_prompt_tokens();
        let bs = self.block_size();
        let compatible = p.remote_block_size.is_none_or(|b| b as usize == bs)
            && p.remote_num_tokens.is_none_or(|n| n as usize == prompt)
            && p.remote_block_ids.len() * bs >= prompt.saturating_sub(1);
        if !compatible {
            // Not the same prompt or block shape: compute it here.
            lock(&self.shared).stats.failures.push(KvTransferFailure::Handshake);
            return 0;
        }
        // Every prompt token but the last (computed for logits, rule 3).
        prompt.saturating_sub(1 + num_local_hit_tokens)
    }

    fn update_state_after_alloc(
        &mut self,
        req: &Request,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    ) {
        let _ = block_hashes;
        let mut s = lock(&self.shared);
        let Some((addr, transfer_id)) = req.kv_transfer_params.as_ref().and_then(remote) else {
            return;
        };
        if block_ids.is_empty() {
            // Nothing to pull (a full local hit, or an incompatible lease).
            self.release(&mut s, req);
            return;
        }
        let first = (req.num_computed_tokens / self.block_size()) as u32;
        let indices: Vec<u32> = (first..first + block_ids.len() as u32).collect();
        s.plans.insert(
            req.id,
            Plan {
                spec: PullSpec { addr, transfer_id: transfer_id.to_owned(), indices },
                block_ids: block_ids.to_vec(),
                num_tokens: req.num_external_tokens as u32,
            },
        );
        s.pending.loads.push(LoadSpec {
            request_id: req.id,
            block_ids: block_ids.to_vec(),
            block_hashes: block_hashes.to_vec(),
        });
    }

    fn build_connector_meta(&mut self) -> ConnectorMeta {
        std::mem::take(&mut lock(&self.shared).pending)
    }

    fn request_finished(&mut self, req: &Request, block_ids: &[BlockId]) -> RequestFinished {
        let mut s = lock(&self.shared);
        // Decode side.
        if s.plans.remove(&req.id).is_some() {
            s.pending.loads.retain(|l| l.request_id != req.id);
            self.release(&mut s, req);
            return RequestFinished::free_now();
        }
        if s.inflight.contains_key(&req.id) {
            // The pull writes into its blocks: free them when it ends.
            return RequestFinished::delay(true);
        }
        if req.kv_transfer_params.as_ref().is_some_and(|p| p.do_remote_prefill) {
            self.release(&mut s, req);
        }
        // Prefill side.
        let leased = self.config.role.prefills()
            && req.kv_transfer_params.as_ref().is_some_and(|p| p.do_remote_decode)
            && matches!(
                req.status,
                RequestStatus::Finished(FinishReason::Stop | FinishReason::Length)
            )
            && !block_ids.is_empty();
        if !leased {
            return RequestFinished::free_now();
        }
        s.next_lease += 1;
        let transfer_id = format!("{}-{}-{}", self.config.engine_id, req.id.get(), s.next_lease);
        let pulls = req.kv_transfer_params.as_ref().and_then(|p| p.num_pulls).unwrap_or(1).max(1);
        let num_tokens = req.num_prompt_tokens() as u32;
        s.leases.insert(
            transfer_id.clone(),
            Lease {
                request_id: req.id,
                block_ids: block_ids.to_vec(),
                num_tokens,
                pulls_left: pulls,
                deadline: Instant::now() + self.config.lease_timeout,
            },
        );
        // The prompt's record travels with the params, so the decode
        // engine reports the prefill's numbers (A18).
        let record =
            req.provenance.as_ref().and_then(|p| PrefillRecord::new(req.id, num_tokens, p).ok());
        let params = KvTransferParams {
            do_remote_decode: false,
            do_remote_prefill: true,
            remote_engine_id: Some(self.config.engine_id.clone()),
            remote_block_ids: block_ids.iter().map(|b| b.0).collect(),
            remote_host: Some(self.config.advertise_host.clone()),
            remote_port: Some(self.port),
            transfer_id: Some(transfer_id),
            remote_num_tokens: Some(num_tokens),
            remote_block_size: Some(self.block_size() as u32),
            num_pulls: Some(pulls),
            ..KvTransferParams::default()
        };
        let params = match &record {
            Some(r) => params.with_prefill_record(r),
            None => params,
        };
        RequestFinished { delay_free: true, kv_transfer_params: Some(params) }
    }
}

impl PdWorker {
    /// Serves the transport's requests against the device pool.
    fn serve_jobs(&mut self, kv: &mut dyn KvBlockIo) {
        let jobs: Vec<EngineJob> = self.jobs.try_iter().collect();
        if jobs.is_empty() {
            return;
        }
        let mut s = lock(&self.shared);
        for job in jobs {
            let transfer_id = match job {
                EngineJob::Release { transfer_id } => transfer_id,
                EngineJob::Pull { transfer_id, indices, reply } => {
                    let Some(lease) = s.leases.get(&transfer_id) else {
                        let _ = reply.send(Err(wire::CODE_EXPIRED));
                        continue;
                    };
                    if indices.iter().any(|&i| i as usize >= lease.block_ids.len()) {
                        let _ = reply.send(Err(wire::CODE_INVALID));
                        continue;
                    }
                    let bpb = kv.bytes_per_block();
                    for &i in &indices {
                        let mut buf = self.client.buffers.take();
                        buf.resize(bpb, 0);
                        kv.read_block(lease.block_ids[i as usize], &mut buf);
                        // Sent at once: the network starts on the first
                        // block while the rest are copied.
                        if reply.send(Ok(buf)).is_err() {
                            break;
                        }
                    }
                    transfer_id
                }
            };
            let Some(lease) = s.leases.get_mut(&transfer_id) else { continue };
            lease.pulls_left = lease.pulls_left.saturating_sub(1);
            let done = lease.pulls_left == 0;
            // The bytes are copied out: the blocks can go once every pull
            // has its copy.
            if done {
                let lease = s.leases.remove(&transfer_id).expect("invariant: present above");
                s.out.finished_sending.push(lease.request_id);
            }
        }
    }

    fn expire_leases(&mut self) {
        let now = Instant::now();
        let mut s = lock(&self.shared);
        let expired: Vec<String> =
            s.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(k, _)| k.clone()).collect();
        for id in expired {
            let lease = s.leases.remove(&id).expect("invariant: listed above");
            tracing::warn!(transfer_id = %id, "KV lease expired without a pull; its blocks are freed");
            s.stats.leases_expired += 1;
            s.out.finished_sending.push(lease.request_id);
        }
        let held: u64 = s.leases.values().map(|l| u64::from(l.num_tokens)).sum();
        s.stats.leases_held_tokens = Some(held);
    }

    /// Copies arrived blocks into the pool and ends finished pulls.
    fn on_pull_events(&mut self, kv: &mut dyn KvBlockIo) {
        let events: Vec<PullEvent> = self.pulls.try_iter().collect();
        for e in events {
            match e {
                PullEvent::Block(req, pos, block) => {
                    let s = lock(&self.shared);
                    if let Some(b) = s.inflight.get(&req).and_then(|i| i.block_ids.get(pos)) {
                        kv.write_block(*b, block.data());
                    }
                    drop(s);
                    self.client.buffers.give(block.0);
                }
                PullEvent::Done(req, result) => self.on_pull(req, result),
            }
        }
    }

    fn on_pull(&mut self, req: RequestId, result: PullResult) {
        let mut s = lock(&self.shared);
        let Some(inflight) = s.inflight.remove(&req) else { return };
        let got = result.num_blocks.min(inflight.block_ids.len());
        if got > 0 {
            s.stats.transfers.push(KvTransferRecord {
                direction: KvTransferDirection::Recv,
                bytes: result.bytes,
                seconds: result.seconds,
                num_blocks: got as u32,
            });
        }
        if let Some(reason) = result.error {
            tracing::warn!(request = %req, reason = reason.as_str(), blocks = got, of = inflight.block_ids.len(), "KV pull failed");
            s.stats.failures.push(reason);
            let lost = inflight.num_tokens.saturating_sub(got as u32 * self.block_size);
            s.stats.failed_tokens += lost;
            s.out.invalid_block_ids.extend_from_slice(&inflight.block_ids[got..]);
        }
        s.out.finished_recving.push(req);
    }
}

impl ConnectorWorker for PdWorker {
    fn start_load_kv(&mut self, meta: &ConnectorMeta, kv: &mut dyn KvBlockIo) {
        self.serve_jobs(kv);
        self.on_pull_events(kv);
        let Some(rt) = &self.runtime else { return };
        let mut s = lock(&self.shared);
        for load in &meta.loads {
            let Some(plan) = s.plans.remove(&load.request_id) else { continue };
            s.inflight.insert(
                load.request_id,
                Inflight { block_ids: plan.block_ids, num_tokens: plan.num_tokens },
            );
            s.pulled.insert(load.request_id);
            let (tx, client, id) = (self.pulls_tx.clone(), self.client.clone(), load.request_id);
            rt.spawn(async move {
                let blocks = tx.clone();
                let result = transport::pull(plan.spec, client, |pos, block| {
                    let _ = blocks.send(PullEvent::Block(id, pos, block));
                })
                .await;
                let _ = tx.send(PullEvent::Done(id, result));
            });
        }
        for (addr, transfer_id) in std::mem::take(&mut s.releases) {
            let client = self.client.clone();
            rt.spawn(async move {
                if let Err(e) = transport::release(addr, transfer_id, client).await {
                    tracing::debug!(
                        "KV lease release failed ({}); the lease will expire",
                        e.as_str()
                    );
                }
            });
        }
    }

    fn get_finished(&mut self, kv: &mut dyn KvBlockIo) -> ConnectorOutput {
        self.serve_jobs(kv);
        self.on_pull_events(kv);
        let events: Vec<SendEvent> = self.events.try_iter().collect();
        {
            let mut s = lock(&self.shared);
            for e in events {
                match e {
                    SendEvent::Sent { bytes, seconds, num_blocks } => {
                        s.stats.transfers.push(KvTransferRecord {
                            direction: KvTransferDirection::Send,
                            bytes,
                            seconds,
                            num_blocks,
                        })
                    }
                    SendEvent::Failed(reason) => s.stats.failures.push(reason),
                }
            }
        }
        self.expire_leases();
        let mut s = lock(&self.shared);
        let mut out = std::mem::take(&mut s.out);
        let stats = std::mem::take(&mut s.stats);
        if !stats.is_empty() {
            out.stats = ConnectorStats::of(stats);
        }
        out
    }
}

impl Drop for PdWorker {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests;
