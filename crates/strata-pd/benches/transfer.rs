//! KV transfer between engines on loopback, against baselines measured in
//! the same run (best of 9 repetitions, interleaved with the baseline's):
//!
//! - throughput of a pull of a 1k- and an 8k-token prompt's blocks
//!   (Qwen2.5-0.5B-shaped KV, 384 KiB per block of 16 tokens: handshake,
//!   framing, CRC, copies out of and into the pools) against a plain TCP
//!   copy of the same bytes between two sockets of the same process;
//! - time to first token of P/D (prefill engine, pull, first decode step)
//!   against one engine, for 1k- and 8k-token prompts on a builtin-shaped
//!   model with an 8k context, and where the time goes.
//!
//! `cargo bench -p strata-pd --bench transfer`

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use strata_core::connector::{ConnectorScheduler, ConnectorWorker};
use strata_core::request::Request;
use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::VecKv;
use strata_core::{
    BlockId, EngineCore, Executor, FinishReason, KvTransferParams, NewRequest, RequestId,
    RequestStatus, SamplingParams,
};
use strata_model::weights::DType;
use strata_model::{load_cpu_executor, KvPoolConfig, LoadOptions, ModelExecutor, ModelSource};
use strata_pd::{open, Fault, Layout, PdConfig, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BPB: usize = 24 * 2 * 16 * 128 * 4;
const REPS: usize = 9;

/// A device pool of `BPB`-byte blocks.
fn pool(data: Vec<u8>) -> VecKv {
    VecKv { bytes_per_block: BPB, data }
}

fn config(role: Role, layout: Layout) -> PdConfig {
    PdConfig {
        role,
        engine_id: format!("{role:?}"),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_host: "127.0.0.1".into(),
        secret: Some("bench".into()),
        lease_timeout: Duration::from_secs(60),
        transfer_timeout: Duration::from_secs(60),
        layout,
        fault: Fault::default(),
    }
}

fn request(id: u64, tokens: usize, params: KvTransferParams) -> Request {
    let new = NewRequest {
        kv_transfer_params: Some(params),
        ..NewRequest::new((0..tokens as u32).collect(), SamplingParams::greedy(1))
    };
    Request::new(RequestId::new(id).unwrap(), new, 0.0, 16)
}

/// A plain TCP copy of `data` into `out` between two sockets (the
/// baseline). Both buffers are allocated and touched beforehand, as the
/// connectors' pools are.
fn tcp_copy(
    rt: &tokio::runtime::Runtime,
    data: &std::sync::Arc<Vec<u8>>,
    out: &mut [u8],
) -> Duration {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data = data.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&data).await.unwrap();
        });
        let t = Instant::now();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.read_exact(out).await.unwrap();
        let d = t.elapsed();
        server.await.unwrap();
        d
    })
}

/// A prefill and a decode connector with their pools, reused across
/// pulls (as in a serving engine: buffers and connections warm).
struct Pair {
    p_sched: strata_pd::PdScheduler,
    p_worker: strata_pd::PdWorker,
    d_sched: strata_pd::PdScheduler,
    d_worker: strata_pd::PdWorker,
    p_pool: VecKv,
    d_pool: VecKv,
    blocks: usize,
    next_id: u64,
}

impl Pair {
    fn new(blocks: usize) -> Self {
        let layout = Layout { fingerprint: 1, block_size: 16, bytes_per_block: BPB as u32 };
        let (p_sched, p_worker, _) = open(config(Role::Prefill, layout)).unwrap();
        let (d_sched, d_worker, _) = open(config(Role::Decode, layout)).unwrap();
        Self {
            p_sched,
            p_worker,
            d_sched,
            d_worker,
            p_pool: pool((0..blocks * BPB).map(|i| (i % 253) as u8).collect()),
            d_pool: pool(vec![0u8; blocks * BPB]),
            blocks,
            next_id: 0,
        }
    }

    /// One pull of every block through the real transport.
    fn pull(&mut self) -> Duration {
        self.next_id += 1;
        let ids: Vec<BlockId> = (0..self.blocks as u32).map(BlockId).collect();
        let tokens = self.blocks * 16;
        let ask = KvTransferParams { do_remote_decode: true, ..Default::default() };
        let mut done = request(self.next_id, tokens, ask);
        done.status = RequestStatus::Finished(FinishReason::Length);
        let params = self.p_sched.request_finished(&done, &ids).kv_transfer_params.unwrap();
        let mut req = request(self.next_id, tokens, params);
        let n = self.d_sched.get_num_new_matched_tokens(&req, 0);
        req.num_external_tokens = n;
        self.d_sched.update_state_after_alloc(&req, &ids, &[]);
        let meta = self.d_sched.build_connector_meta();
        self.d_pool.data.fill(0);
        let t = Instant::now();
        self.d_worker.start_load_kv(&meta, &mut self.d_pool);
        loop {
            // The engine threads' step loop: serve jobs, collect pulls.
            self.p_worker.get_finished(&mut self.p_pool);
            let out = self.d_worker.get_finished(&mut self.d_pool);
            if !out.finished_recving.is_empty() {
                assert!(out.invalid_block_ids.is_empty());
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        let d = t.elapsed();
        let last = (self.blocks - 1) * BPB;
        assert_eq!(self.p_pool.data[..last], self.d_pool.data[..last], "the bytes arrived intact");
        d
    }
}

fn throughput() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("| prompt | blocks | MiB | P/D pull GB/s | plain TCP GB/s | ratio |");
    println!("|---|---|---|---|---|---|");
    for tokens in [1024usize, 8192] {
        let blocks = tokens / 16;
        let bytes = blocks * BPB;
        let data = std::sync::Arc::new(vec![7u8; bytes]);
        let mut out = vec![1u8; bytes];
        let mut pair = Pair::new(blocks);
        // Interleaved, so both see the same machine (the loopback copy's
        // speed swings with what else the 2 cores are doing).
        let (mut base, mut pd) = (Duration::MAX, Duration::MAX);
        for _ in 0..REPS {
            base = base.min(tcp_copy(&rt, &data, &mut out));
            pd = pd.min(pair.pull());
        }
        let gbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
        println!(
            "| {tokens} | {blocks} | {} | {:.2} | {:.2} | {:.2} |",
            bytes >> 20,
            gbps(pd),
            gbps(base),
            base.as_secs_f64() / pd.as_secs_f64()
        );
    }
}

fn model_engine(
    role: Option<Role>,
    port_out: &mut u16,
) -> EngineCore<ModelExecutor<strata_model::backend::cpu::CpuBackend>> {
    let mut model = strata_model::builtin::config();
    model.max_position_embeddings = 8192 + 64;
    let source = ModelSource::Dummy { config: Box::new(model), seed: 7, dtype: DType::F32 };
    let opts = LoadOptions {
        kv: KvPoolConfig { block_size: 16, num_blocks: Some(8192 / 16 + 64), memory_bytes: 0 },
        max_model_len: Some(8192 + 64),
        ..LoadOptions::default()
    };
    let mut exec = load_cpu_executor(&source, &opts, &mut |_, _| {}).unwrap();
    let spec = exec.kv_cache_spec();
    let sched_config = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 2048,
        block_size: 16,
        num_blocks: 0,
        max_model_len: 8192 + 64,
        ..SchedulerConfig::default()
    };
    let connector = role.map(|role| {
        let layout = Layout {
            fingerprint: exec.kv_fingerprint(),
            block_size: 16,
            bytes_per_block: spec.bytes_per_block as u32,
        };
        let (s, w, port) = open(config(role, layout)).unwrap();
        *port_out = port;
        exec.set_connector(Box::new(w));
        Box::new(s) as Box<dyn ConnectorScheduler>
    });
    EngineCore::with_connector(exec, sched_config, connector)
}

/// Runs until the first token; returns (time, params of the finished
/// output if any). Steps `other` alongside so a prefill engine serves.
fn first_token<E: Executor, F: Executor>(
    e: &mut EngineCore<E>,
    other: Option<&mut EngineCore<F>>,
    prompt: &[u32],
    params: Option<KvTransferParams>,
    max_tokens: u32,
) -> (Duration, Option<KvTransferParams>) {
    let new = NewRequest {
        kv_transfer_params: params,
        ..NewRequest::new(prompt.to_vec(), SamplingParams::greedy(max_tokens))
    };
    let t = Instant::now();
    e.add_request(new, 0.0).unwrap();
    let mut ttft = None;
    let mut out = None;
    let mut other = other;
    for _ in 0..1_000_000 {
        if !e.has_unfinished() || (ttft.is_some() && out.is_some()) {
            break;
        }
        let r = e.step(0.0);
        if let Some(o) = other.as_deref_mut() {
            o.step(0.0);
        }
        if ttft.is_none() && !r.prefill_records.is_empty() {
            ttft = Some(t.elapsed());
        }
        if let Some(p) = r.outputs.iter().find_map(|o| o.kv_transfer_params.clone()) {
            out = Some(p);
        }
        if ttft.is_some() && max_tokens == 1 && out.is_some() {
            break;
        }
    }
    (ttft.unwrap(), out)
}

fn ttft() {
    println!("\nTTFT, builtin-shaped model (8k context, f32), one engine vs P/D (prefill + pull + first decode step):");
    println!("| prompt | one engine | P/D | ratio | prefill hop | decode hop (pull + 1 token) | added / one engine |");
    println!("|---|---|---|---|---|---|---|");
    for tokens in [1024usize, 8192] {
        let prompt: Vec<u32> = (0..tokens as u32).map(|i| (i * 7 + 3) % 500 + 2).collect();
        let mut port = 0;
        let mut single = model_engine(None, &mut port);
        let none: Option<&mut EngineCore<ModelExecutor<strata_model::backend::cpu::CpuBackend>>> =
            None;
        let (alone, _) = first_token(&mut single, none, &prompt, None, 1);
        drop(single);
        let mut prefill = model_engine(Some(Role::Prefill), &mut port);
        let mut decode = model_engine(Some(Role::Decode), &mut port);
        let ask = KvTransferParams { do_remote_decode: true, ..Default::default() };
        let none: Option<&mut EngineCore<ModelExecutor<strata_model::backend::cpu::CpuBackend>>> =
            None;
        let t = Instant::now();
        let (_, params) = first_token(&mut prefill, none, &prompt, Some(ask), 1);
        let hop1 = t.elapsed();
        let (hop2, _) = first_token(&mut decode, Some(&mut prefill), &prompt, params, 1);
        let total = hop1 + hop2;
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        // The prefill hop is the same prefill one engine runs (its run to
        // run spread is larger than the decode hop): the decode hop is
        // what P/D adds.
        println!(
            "| {tokens} | {} | {} | {:.3} | {} | {} | {:.2}% |",
            ms(alone),
            ms(total),
            total.as_secs_f64() / alone.as_secs_f64(),
            ms(hop1),
            ms(hop2),
            100.0 * hop2.as_secs_f64() / alone.as_secs_f64()
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    throughput();
    ttft();
}
