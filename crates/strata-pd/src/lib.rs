//! strata-pd: prefill/decode disaggregation.
//!
//! A prefill engine computes a prompt, holds its KV blocks under a lease
//! and answers with `kv_transfer_params` naming them; a decode engine given
//! those params pulls the blocks it does not already have over TCP and
//! decodes. Both halves are one connector ([`connector`]) behind
//! strata-core's traits, so the scheduler's accounting (the `remote`
//! source, load-failure policies) is the same as for every connector; the
//! transport ([`transport`], wire format in [`wire`]) sits behind the
//! worker side, so another transport (NIXL, RDMA) replaces it without
//! touching the scheduler.

pub mod connector;
pub mod stats;
pub mod transport;
pub mod wire;

pub use connector::{open, PdConfig, PdScheduler, PdWorker, Role};
pub use stats::{KvTransferDirection, KvTransferFailure, KvTransferRecord, PdStats};
pub use transport::Fault;
pub use wire::Layout;
