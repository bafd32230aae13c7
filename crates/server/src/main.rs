//! The `runnel` binary: see `runnel --help`.

// Jobs are allocated on one worker thread and freed on another; glibc's
// malloc contends on its arena locks there (measured by `cargo xtask bench
// core`: the engine ran about 1.4 times faster with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    runnel_server::cli::main()
}
