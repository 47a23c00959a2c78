//! `sqlrsync-server`: see `sqlrsync-server --help`.

fn main() -> std::process::ExitCode {
    sqlrsync::server::cli::main()
}
