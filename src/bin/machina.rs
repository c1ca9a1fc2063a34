fn main() {
    std::process::exit(machina::cli::main());
}
