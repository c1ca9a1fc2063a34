fn main() {
    std::process::exit(machina::launcher::main());
}
