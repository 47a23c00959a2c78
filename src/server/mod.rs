//! sqlrsync-server: versioned replica storage behind the websocket API.
//!
//! - [`cli`]: the `sqlrsync-server` commands (serve, namespace, keys, verify);
//!   [`cli_ops`]: backup, restore and `replica expect`.
//! - [`app`]: routes, limits, TLS, graceful shutdown ([`app::run`]).
//! - [`admission`]: who may open which session (slot, key, path, access),
//!   decided before the upgrade; [`limits`]: the session budgets and each
//!   client address's share of them.
//! - [`push`], [`pull`], [`subscribe`]: the websocket sessions of
//!   PROTOCOL.md sections 2-5, bridging the embedded helper ([`session`]);
//!   [`pull_delta`]: a pull served as a delta (our extension).
//! - [`web`]: the HTML pages and downloads; [`download`]: a version read
//!   for a download, page by page from the store, checked as it goes.
//! - [`store`]: metadata, content-addressed pages and materialised versions,
//!   behind typed methods (the only place that knows SQL or pack files).
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
pub mod cli_ops;
pub mod config;
pub mod conn;
pub mod download;
pub mod frames;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod pull;
pub mod pull_delta;
pub mod push;
pub mod session;
pub mod store;
pub mod subscribe;
pub mod throttle;
pub mod web;

pub use app::{ServeConfig, run};
