//! The `peerup` binary: all behaviour lives in the library (`peerup_gateway::cli`).

fn main() -> std::process::ExitCode {
    peerup_gateway::cli::main()
}
