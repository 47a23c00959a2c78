//! sqlrsync: replicate live SQLite databases, sending only changed pages.
//!
//! The work is done by SQLite's own sqlite3_rsync, compiled by build.rs and
//! embedded ([`helper`]). Around it: the command line ([`cli`]), LOCAL sync
//! ([`local`]), the sqlite3_rsync drop-in ([`dropin`]), the wire format
//! shared by client and server ([`wire`]), SQLite files ([`sqlite`]), the
//! link that carries a helper's stream over a websocket ([`link`]), the
//! websocket client ([`client`]) and the server ([`server`]).

pub mod cli;
pub mod client;
pub mod config;
pub mod dropin;
pub mod fuzzing;
pub mod helper;
pub mod link;
pub mod local;
pub mod printer;
pub mod server;
pub mod sqlite;
pub mod wire;
