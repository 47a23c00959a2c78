//! `sqlrsync`: see `sqlrsync --help`.

fn main() -> std::process::ExitCode {
    sqlrsync::cli::main()
}
