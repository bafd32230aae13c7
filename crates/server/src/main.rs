//! The `runnel` binary: see `runnel --help`.

fn main() -> std::process::ExitCode {
    runnel_server::cli::main()
}
