//! The remote half of the client: PUSH, PULL and SUBSCRIBE over websockets.

use std::process::ExitCode;

use crate::cli::{Cli, Mode};

/// Runs a PUSH or PULL mode.
pub fn run(_cli: &Cli, mode: Mode) -> anyhow::Result<ExitCode> {
    anyhow::bail!("{} is not implemented yet", mode.name())
}
