//! `strata serve`: the OpenAI-compatible server on one engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use strata_core::connector::KvLoadFailurePolicy;
use strata_core::scheduler::{SchedulerConfig, SchedulingPolicy};
use strata_core::testing::{FakeExecutor, LatencyModel, SimExecutor};
use strata_core::{EngineCore, Executor};
use strata_metrics::{CacheConfigInfo, EngineMetrics};
use strata_server::accounting_log::AccountingLog;
use strata_server::{app, AppState, EngineHandle};
use strata_tokenizer::Tokenizer;

use crate::model_ref::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind; loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Model name clients use (default: the --model value).
    #[arg(long)]
    pub served_model_name: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Seconds between stats log lines.
    #[arg(long, default_value_t = 10.0)]
    pub log_stats_interval: f64,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests in flight beyond which new ones get 503.
    #[arg(long, default_value_t = 4096)]
    pub max_queued_requests: usize,
    /// Append one JSON line per finished request (tokens, sources, times).
    #[arg(long)]
    pub accounting_log: Option<std::path::PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.model.model == "sim" {
        // The simulated executor: the HTTP stack, scheduler and metrics
        // under load without model math (a latency model instead), with the
        // built-in tokenizer. For load tests and benchmarks.
        let mut fake = FakeExecutor::new(65_536, args.model.block_size, 4096);
        fake.vocab_size = strata_model::builtin::VOCAB_SIZE;
        let latency = LatencyModel {
            per_step: Duration::from_micros(500),
            per_prefill_token: Duration::from_micros(20),
            per_decode_seq: Duration::from_micros(10),
        };
        return serve(args, SimExecutor::new(fake, latency, true), Tokenizer::builtin());
    }
    let mut loaded = args.model.load()?;
    let tokenizer = loaded.tokenizer.take().context("the server needs a model with a tokenizer")?;
    serve(args, loaded.executor, tokenizer)
}

fn serve<E: Executor + Send + 'static>(
    args: ServeArgs,
    executor: E,
    tokenizer: Tokenizer,
) -> Result<()> {
    let spec = executor.kv_cache_spec();
    let config = SchedulerConfig {
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        block_size: spec.block_size,
        num_blocks: spec.num_blocks,
        max_model_len: spec.max_model_len,
        policy: SchedulingPolicy::Fcfs,
        enable_prefix_caching: true,
        kv_load_failure_policy: KvLoadFailurePolicy::Fail,
    };
    let name = args.served_model_name.clone().unwrap_or_else(|| args.model.model.clone());
    let cache = CacheConfigInfo {
        block_size: spec.block_size,
        num_blocks: spec.num_blocks,
        tiers: "device".into(),
    };
    let metrics = EngineMetrics::new(&name, "0", spec.max_model_len, &cache);
    let accounting = match &args.accounting_log {
        Some(path) => Some((
            AccountingLog::open(path.clone())
                .with_context(|| format!("opening {}", path.display()))?,
            name.clone(),
        )),
        None => None,
    };
    let engine = EngineHandle::spawn_with(
        EngineCore::new(executor, config),
        metrics,
        Duration::from_secs_f64(args.log_stats_interval.max(0.1)),
        accounting,
    );
    let state = Arc::new(AppState {
        engine: engine.clone(),
        tokenizer: Arc::new(tokenizer),
        served_model_name: name,
        max_model_len: spec.max_model_len,
        api_key: args.api_key.clone(),
        max_queued_requests: args.max_queued_requests,
    });
    let addr: SocketAddr =
        format!("{}:{}", args.host, args.port).parse().context("invalid --host/--port")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!("serving on http://{}", listener.local_addr()?);
        axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal()).await?;
        engine.shutdown();
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGINT or SIGTERM: stop accepting, let in-flight responses finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
