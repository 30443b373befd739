//! vLLM's KV events as llm-d consumes them, against real `strata serve`
//! processes: scripts/kv_events_check.py plays llm-d's ZMQ subscriber, its
//! replay client and its indexer (pyzmq, msgpack, cbor2 from
//! scripts/requirements-test.txt), written from the contract, and checks
//! every frame, every event and, before each request, that the indexer's
//! prediction equals the cached tokens strata reports.

mod common;

fn check(scenario: &str) {
    common::run_client_script("kv_events_check.py", &[env!("CARGO_BIN_EXE_strata"), scenario]);
}

/// Map events (current vLLM): frames, fields, uint64 hashes, parents,
/// salt, eviction, and the indexer twin's predictions.
#[test]
fn pypi_kv_events_map_format_keep_the_contract_and_predict_every_hit() {
    check("contract-map");
}

/// The same with positional events (vLLM before #42892, older llm-d).
#[test]
fn pypi_kv_events_array_format_keep_the_contract_and_predict_every_hit() {
    check("contract-array");
}

/// A late subscriber replays from 0 gap-free; a restart sends the sequence
/// back to 0 and the twin rebuilds the pod.
#[test]
fn pypi_kv_events_replay_from_zero_and_restart_rebuilds_the_indexer() {
    check("replay-restart");
}

/// Two engines, one subscriber: the twin sends each request to the engine
/// holding its prefix, and that engine reports the predicted hit.
#[test]
fn pypi_kv_events_indexer_twin_picks_the_engine_that_hits() {
    check("two-engines");
}

/// A host-RAM tier under a small device pool: CPU events indexed per
/// medium; the twin's device and tier predictions match what strata
/// reports reusing.
#[test]
fn pypi_kv_events_offload_tier_is_announced_as_cpu_and_predicted() {
    check("tiers");
}
