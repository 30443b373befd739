//! KV-event publishing cost, against a baseline measured in the same run:
//! - one engine step at 1024 running decodes (fake executor, no model)
//!   with events off, and with events on and handed to a real publisher
//!   (ZMQ PUB on loopback, a SUB draining it), so the ratio is the
//!   engine thread's overhead (recording, taking, queueing; the encoding
//!   and sending run on the publisher thread);
//! - the publisher's sustained rate: batches of 64 `BlockStored` events
//!   (16 tokens each, as 1024 decodes produce per step) sent as fast as
//!   the engine can queue them, until the subscriber has them all; drops
//!   are counted and printed.
//!
//! `cargo bench -p strata-server --bench kv_events`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use strata_core::kv::{BlockHash, KvEventBatch, KvMedium};
use strata_core::scheduler::{Scheduler, SchedulerConfig};
use strata_core::testing::FakeExecutor;
use strata_core::{Executor, NewRequest, RequestId, SamplingParams};
use strata_server::kv_events::{self, KvEventSender, KvEventsConfig};
use zeromq::{Socket, SocketRecv, SubSocket};

/// A publisher connecting to a SUB on loopback that counts what it gets.
fn publisher() -> (KvEventSender, std::sync::mpsc::Receiver<u64>) {
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (count_tx, count_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut sub = SubSocket::new();
            let ep = sub.bind("tcp://127.0.0.1:0").await.unwrap();
            sub.subscribe("kv@").await.unwrap();
            let port = match ep {
                zeromq::Endpoint::Tcp(_, p) => p,
                other => panic!("{other:?}"),
            };
            port_tx.send(port).unwrap();
            let mut n = 0u64;
            while sub.recv().await.is_ok() {
                n += 1;
                if count_tx.send(n).is_err() {
                    return;
                }
            }
        });
    });
    let port = port_rx.recv().unwrap();
    let config = KvEventsConfig::parse(&format!(
        r#"{{"enable_kv_cache_events": true, "endpoint": "tcp://127.0.0.1:{port}", "topic": "kv@bench@m"}}"#
    ))
    .unwrap()
    .unwrap();
    let sender = kv_events::start(config, Default::default()).unwrap();
    // Let the PUB connect and the subscription arrive (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut b = KvEventBatch::default();
        b.cleared();
        sender.send(0.0, b);
        if count_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            break;
        }
    }
    while count_rx.try_recv().is_ok() {}
    (sender, count_rx)
}

fn decoding(n: u32, events: bool) -> (Scheduler, FakeExecutor, f64) {
    let blocks = n as usize * 64 + 64;
    let config = SchedulerConfig {
        max_num_seqs: 2048,
        max_num_batched_tokens: 8192,
        block_size: 16,
        num_blocks: blocks,
        max_model_len: 1 << 20,
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(config);
    if events {
        s.enable_kv_events();
    }
    let mut ex = FakeExecutor::new(blocks, 16, 1 << 20);
    ex.record_steps = false;
    for i in 0..n {
        let prompt = (0..100).map(|t| (i * 7919 + t) % 900 + 2).collect();
        let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(500) };
        s.add_request(RequestId::new(i as u64 + 1).unwrap(), NewRequest::new(prompt, params), 0.0)
            .unwrap();
    }
    let mut t = 0.0;
    for _ in 0..1000 {
        if s.num_waiting() == 0 {
            break;
        }
        t += 1.0;
        let plan = s.schedule(t);
        let out = ex.execute(&s.batch(&plan)).unwrap();
        s.update_from_output(&plan, Ok(out), t);
    }
    let _ = s.take_kv_events();
    (s, ex, t)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Events off: the baseline.
    Off,
    /// Recorded and taken, then dropped: the core's share.
    Recorded,
    /// Recorded, taken and handed to the publisher thread.
    Published,
}

/// This thread's CPU time (time it ran, not time it waited for a core).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `steps` engine steps at 1024 decodes in `mode` (fresh engines every
/// 256 steps, setup not measured): wall time, and this thread's CPU time.
fn run_steps_cpu(mode: Mode, steps: u64, sender: &KvEventSender) -> (Duration, Duration) {
    let mut wall = Duration::ZERO;
    let mut cpu = Duration::ZERO;
    let mut left = steps;
    while left > 0 {
        let (mut s, mut ex, mut t) = decoding(1024, mode != Mode::Off);
        let chunk = left.min(256);
        let cpu_start = thread_cpu();
        let start = Instant::now();
        for _ in 0..chunk {
            t += 1.0;
            let plan = s.schedule(t);
            let out = ex.execute(&s.batch(&plan)).unwrap();
            black_box(s.update_from_output(&plan, Ok(out), t));
            match mode {
                Mode::Off => {}
                Mode::Recorded => drop(black_box(s.take_kv_events())),
                Mode::Published => {
                    // As the server's engine thread does.
                    sender.send(t, s.take_kv_events());
                    if let Some(spare) = sender.spare() {
                        s.recycle_kv_events(spare);
                    }
                }
            }
        }
        wall += start.elapsed();
        cpu += thread_cpu() - cpu_start;
        left -= chunk;
    }
    (wall, cpu)
}

fn run_steps(mode: Mode, steps: u64, sender: &KvEventSender) -> Duration {
    run_steps_cpu(mode, steps, sender).0
}

fn step(c: &mut Criterion) {
    let (sender, _count) = publisher();
    let mut g = c.benchmark_group("1024 decodes, one step");
    for (name, mode) in [
        ("events off (baseline)", Mode::Off),
        ("events recorded, not published", Mode::Recorded),
        ("events on, published", Mode::Published),
    ] {
        g.bench_function(name, |b| b.iter_custom(|iters| run_steps(mode, iters, &sender)));
    }
    g.finish();
    // The same, interleaved round by round, so a machine whose load
    // changes during the run affects all three alike.
    // Wall time counts time the engine thread waited for a core, which
    // the publisher and the bench's subscriber take on a small machine;
    // the engine thread's CPU time does not.
    let mut wall = [Duration::ZERO; 3];
    let mut cpu = [Duration::ZERO; 3];
    for _ in 0..8 {
        for (i, mode) in [Mode::Off, Mode::Recorded, Mode::Published].into_iter().enumerate() {
            let (w, c) = run_steps_cpu(mode, 256, &sender);
            wall[i] += w;
            cpu[i] += c;
        }
    }
    let per_step = |d: Duration| d.as_secs_f64() * 1e6 / (8.0 * 256.0);
    for (what, t) in [("wall", wall), ("engine-thread CPU", cpu)] {
        eprintln!(
            "interleaved, {what} per step: off {:.1} us, recorded {:.1} us ({:.3}x), published {:.1} us ({:.3}x)",
            per_step(t[0]),
            per_step(t[1]),
            t[1].as_secs_f64() / t[0].as_secs_f64(),
            per_step(t[2]),
            t[2].as_secs_f64() / t[0].as_secs_f64()
        );
    }
    let c = sender.counters();
    eprintln!(
        "published {} batches ({} events), dropped {}",
        c.published_batches.get(),
        c.published_events.get(),
        c.dropped_batches.get()
    );
}

fn batch(k: u64) -> KvEventBatch {
    let mut b = KvEventBatch::default();
    for i in 0..64 {
        let tokens: Vec<u32> = (0..16).map(|t| (k as u32 + t) % 50_000).collect();
        b.stored(&[BlockHash(k * 64 + i)], Some(BlockHash(k)), &tokens, 16, None, KvMedium::Device);
    }
    b
}

fn sustained(_: &mut Criterion) {
    let (sender, count) = publisher();
    let before = sender.counters().dropped_batches.get();
    let n = 20_000u64;
    let batches: Vec<_> = (0..n).map(batch).collect();
    let start = Instant::now();
    for b in batches {
        sender.send(1.0, b);
    }
    let queued = start.elapsed();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while got < n && Instant::now() < deadline {
        match count.recv_timeout(Duration::from_secs(5)) {
            Ok(k) => got = k,
            Err(_) => break,
        }
    }
    let elapsed = start.elapsed();
    let dropped = sender.counters().dropped_batches.get() - before;
    eprintln!(
        "sustained: {n} batches x 64 events queued in {:.3} s, {got} received in {:.3} s: {:.0} events/s, {dropped} batches dropped",
        queued.as_secs_f64(),
        elapsed.as_secs_f64(),
        (got * 64) as f64 / elapsed.as_secs_f64()
    );
}

criterion_group!(benches, step, sustained);
criterion_main!(benches);
