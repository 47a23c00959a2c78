//! `sqlrsync-server`: see `sqlrsync-server --help`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
