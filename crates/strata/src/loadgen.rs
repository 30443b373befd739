//! `strata loadgen`: many concurrent streaming clients against a server,
//! for a bounded time, over plain HTTP/1.1 on loopback. Reports requests,
//! errors, streamed tokens (from each stream's usage chunk), time to first
//! token, and, given the server's pid, the server's CPU time per streamed
//! token.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// Server address, e.g. 127.0.0.1:8000 (loopback only).
    #[arg(long)]
    pub addr: String,
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    #[arg(long, default_value_t = 20.0)]
    pub duration_secs: f64,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u32,
    #[arg(long, default_value = "Tell me about the engine and its cache.")]
    pub prompt: String,
    /// The server's pid, to report its CPU time per streamed token.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// One streaming request: (time to first data chunk, completion tokens).
async fn one(addr: &str, body: &str) -> Result<(f64, u64)> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next_line().await?.context("no status line")?;
    if !status.contains(" 200 ") {
        bail!("{status}");
    }
    let (mut ttft, mut tokens) = (None, None);
    while let Some(line) = lines.next_line().await? {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        ttft.get_or_insert_with(|| start.elapsed().as_secs_f64());
        if data == "[DONE]" {
            break;
        }
        if data.contains("\"usage\"") {
            let v: serde_json::Value = serde_json::from_str(data)?;
            tokens = v["usage"]["completion_tokens"].as_u64();
        }
    }
    Ok((ttft.context("no data")?, tokens.context("no usage chunk")?))
}

pub fn run(args: LoadgenArgs) -> Result<()> {
    let host = args.addr.split(':').next().unwrap_or_default();
    if !(host.starts_with("127.") || host == "localhost" || host == "[::1]") {
        bail!("loadgen only targets loopback addresses");
    }
    let body =
        serde_json::json!({"prompt": args.prompt, "max_tokens": args.max_tokens, "stream": true,
        "ignore_eos": true, "stream_options": {"include_usage": true}})
        .to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration_secs);
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|_| {
                let (addr, body) = (args.addr.clone(), body.clone());
                tokio::spawn(async move {
                    let mut out = (Vec::new(), 0u64, 0u64);
                    while Instant::now() < deadline {
                        match one(&addr, &body).await {
                            Ok((ttft, tokens)) => {
                                out.0.push(ttft);
                                out.1 += tokens;
                            }
                            Err(_) => out.2 += 1,
                        }
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await);
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = args.server_pid.and_then(cpu_seconds).zip(cpu_before).map(|(a, b)| a - b);
    let (mut ttfts, mut tokens, mut errors) = (Vec::new(), 0u64, 0u64);
    for r in results {
        let (t, n, e) = r.context("a client task panicked")?;
        ttfts.extend(t);
        tokens += n;
        errors += e;
    }
    ttfts.sort_by(f64::total_cmp);
    let q = |p: f64| {
        ttfts
            .get(((ttfts.len() as f64 * p) as usize).min(ttfts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "clients {}, {:.1} s: {} requests, {} errors, {} streamed tokens ({:.0} tokens/s)",
        args.clients,
        elapsed,
        ttfts.len(),
        errors,
        tokens,
        tokens as f64 / elapsed
    );
    println!(
        "time to first token: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        q(0.5) * 1e3,
        q(0.9) * 1e3,
        q(0.99) * 1e3
    );
    if let Some(cpu) = cpu {
        println!(
            "server CPU {:.2} s = {:.1} us per streamed token",
            cpu,
            cpu * 1e6 / tokens.max(1) as f64
        );
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
