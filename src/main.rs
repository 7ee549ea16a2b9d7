use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(reprise::cli::main())
}
