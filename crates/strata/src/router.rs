//! `strata router`: the P/D front end over prefill and decode engines
//! (the routing itself lives in `strata_server::router`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use strata_server::router::{router_app, Policy, RouterConfig, RouterState};

#[derive(Args, Debug)]
pub struct RouterArgs {
    /// A prefill engine (`strata serve` with a P/D connector), e.g.
    /// http://127.0.0.1:8100. Repeat for several.
    #[arg(long = "prefill", required = true, value_name = "URL")]
    pub prefill: Vec<String>,
    /// A decode engine. Repeat for several.
    #[arg(long = "decode", required = true, value_name = "URL")]
    pub decode: Vec<String>,
    /// Address to bind; loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// How an engine of each role is picked per request.
    #[arg(long, value_enum, default_value_t = PolicyArg::RoundRobin)]
    pub policy: PolicyArg,
    /// Require `Authorization: Bearer KEY` on /v1/* (the header is passed
    /// on to the engines).
    #[arg(long)]
    pub api_key: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PolicyArg {
    /// Each engine in turn.
    #[default]
    RoundRobin,
    /// Fewest requests in flight from this router; ties in turn.
    LeastLoaded,
}

pub fn run(args: RouterArgs) -> Result<()> {
    let mut config = RouterConfig::new(args.prefill, args.decode);
    config.policy = match args.policy {
        PolicyArg::RoundRobin => Policy::RoundRobin,
        PolicyArg::LeastLoaded => Policy::LeastLoaded,
    };
    config.api_key = args.api_key;
    let addr: SocketAddr =
        format!("{}:{}", args.host, args.port).parse().context("invalid --host/--port")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        // The HTTP client is built inside the runtime it will run on.
        let state = Arc::new(RouterState::new(config)?);
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!(
            prefill = state.prefill.engines.len(),
            decode = state.decode.engines.len(),
            policy = ?state.policy,
            "P/D router"
        );
        tracing::info!("serving on http://{}", listener.local_addr()?);
        axum::serve(listener, router_app(state))
            .with_graceful_shutdown(crate::serve::shutdown_signal())
            .await?;
        tracing::info!("stopped");
        Ok(())
    })
}
