//! The `machina` command. It uses mimalloc: generating thousands of VMs is
//! allocation-heavy, and mimalloc roughly halves the time glibc's malloc
//! takes there (measured with `cargo bench --bench generate`). The
//! privileged `machina-launch` keeps the system allocator, so no extra C
//! code runs as root.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(machina::cli::main());
}
