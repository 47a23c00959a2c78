//! Everything the user sees: every byte sqlrsync writes to stdout or stderr
//! goes through [`Printer`] (uv's rule), so one place decides what a mode,
//! `--quiet`, `--json` and `-v` let through.
//!
//! - [`printer`]: the output policy and the only `println!`/`eprintln!`;
//! - [`progress`]: the progress bar and live lines of one sync.
//!
//! Documented exceptions, which write on their own: clap's `--help` text
//! and usage errors (`cli::usage_error` prints clap's help as clap formats
//! it), the key prompt (rpassword writes to the terminal, not to stderr),
//! `tracing` logs (`-vv`, `SQLRSYNC_LOG`, the server's log), and the
//! sqlite3_rsync helper itself once `dropin::exec_helper` has become it.

pub mod printer;
pub mod progress;

pub use printer::{Printer, human_bytes, page_bar};
