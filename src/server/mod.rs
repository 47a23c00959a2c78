//! sqlrsync-server: versioned replica storage behind the websocket API.
//!
//! - [`cli`]: the `sqlrsync-server` commands (serve, namespace, keys, verify);
//!   [`cli_replica`]: `replica show` and `replica rename`.
//!   [`cli_ops`]: backup, restore and `replica expect`.
//! - [`app`]: routes, limits, TLS, graceful shutdown ([`app::run`]).
//! - [`admission`]: who may open which session (slot, key, path, access),
//!   decided before the upgrade; [`limits`]: the session budgets and each
//!   client address's share of them.
//! - [`push`], [`pull`], [`subscribe`]: the websocket sessions of
//!   PROTOCOL.md sections 2-5, bridging the embedded helper ([`session`]);
//!   [`pull_delta`]: a pull served as a delta (our extension).
//! - [`resolve`]: the version a reference (`@N`, `@latest-N`, a point in
//!   time) names, for pulls and downloads.
//! - [`versions_api`]: a replica's versions as JSON, paged (our
//!   extension, read as a pull is admitted).
//! - [`web`]: the HTML pages and downloads; [`download`]: a version read
//!   for a download, page by page from the store, checked as it goes.
//! - [`store`]: metadata, content-addressed pages and materialised versions,
//!   behind typed methods (the only place that knows SQL or pack files).
//! - [`retention`]: which versions a retention policy keeps (the store
//!   prunes the rest and compacts its packs, [`store::prune`],
//!   [`store::compact`]), on a schedule ([`maintenance`]).
//! - [`keys`], [`names`]: key hashing and checks, path validation.
//! - [`throttle`]: addresses that send wrong keys are slowed down, and
//!   their refusals logged in summary.
//! - [`metrics`]: `/healthz` and `/metrics` (Prometheus text), and the
//!   small API the sessions report to.
//! - [`frames`]: what a session does with each client frame, and the
//!   stream limits; [`conn`]: the deadline for connections that never
//!   send a request.
//! - [`notify`]: dead-man notifications for replicas pushed less often
//!   than expected.

pub mod admission;
pub mod app;
pub mod cli;
pub mod cli_maintenance;
pub mod cli_ops;
pub mod cli_replica;
pub mod config;
pub mod conn;
pub mod download;
pub mod frames;
pub mod keys;
pub mod limits;
pub mod maintenance;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod pull;
pub mod pull_delta;
pub mod push;
pub mod resolve;
pub mod retention;
pub mod session;
pub mod store;
pub mod subscribe;
pub mod throttle;
pub mod versions_api;
pub mod web;

pub use app::{ServeConfig, run};
