//! The integration tests: one test binary (`cargo test --test it`), one
//! module per area, all sharing `support` (an isolated HOME per test, real
//! databases, the real `sqlrsync` and `sqlrsync-server` binaries, the
//! websocket driver, the fake server, the fault proxy and the fixtures).
//!
//! A test's name is `<file>::<test>`, e.g. `local_sync::wal_origin`:
//! `cargo test --test it local_sync::` runs one file's tests.

mod support;

mod client_hostile;
mod client_paths;
mod client_safety;
mod client_setup;
mod compat_strict;
mod delta_pull;
mod delta_push;
mod dropin_ssh;
mod faults_kill;
mod faults_network;
mod fuzz_corpus;
mod helper_extract;
mod helper_vendor;
mod load;
mod local_bad_input;
mod local_live;
mod local_symlinks;
mod local_sync;
mod remote_faults;
mod remote_keys;
mod remote_roundtrip;
mod remote_subscribe;
mod remote_unchanged;
mod remote_verify;
mod server_abuse;
mod server_backup;
mod server_cli_e2e;
mod server_config;
mod server_damage;
mod server_disk_full;
mod server_hostile;
mod server_keys;
mod server_limits;
mod server_metrics;
mod server_notify;
mod server_prune;
mod server_push_pull;
mod server_rebuild;
mod server_replicas;
mod server_sessions;
mod server_store_safety;
mod server_tls;
mod server_web;
mod watch;
