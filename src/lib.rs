//! sqlrsync: replicate live SQLite databases, sending only changed pages.
//!
//! The work is done by SQLite's own sqlite3_rsync, compiled by build.rs and
//! embedded ([`helper`]). Around it: the command line ([`cli`]), which
//! resolves flags, environment and files into settings once and hands them
//! to LOCAL sync ([`local`]) or the websocket client ([`client`]); the
//! sqlite3_rsync drop-in ([`dropin`]); the wire format shared by client and
//! server ([`wire`]); SQLite files ([`sqlite`]); the one link that carries a
//! helper's stream over a websocket, for client, server and tests
//! ([`link`]); the terminal output, all of
//! it through one printer ([`ui`]); and the server ([`server`]).

pub mod cli;
pub mod client;
pub mod dropin;
pub mod fuzzing;
pub mod helper;
pub mod link;
pub mod local;
pub mod server;
pub mod sqlite;
pub mod ui;
pub mod wire;

/// The client's files under their old path, which the integration tests
/// (and scripts) name; the module is [`client::files`].
pub use client::files as config;
