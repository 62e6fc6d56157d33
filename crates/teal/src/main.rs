//! The `teal` binary: everything lives in the library so tests can call it.

fn main() {
    std::process::exit(teal::cli::main());
}
