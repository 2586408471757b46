//! The `strata` binary: parses the command line, runs one command, maps its error to
//! an exit code. Everything else lives in the library and in `cli/`.

mod cli;

fn main() {
    std::process::exit(cli::run());
}
