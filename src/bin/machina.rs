//! The `machina` command. It uses mimalloc: generating thousands of VMs is
//! allocation-heavy, and mimalloc roughly halves the time glibc's malloc
//! takes there (measured with `cargo bench --bench generate`). The
//! privileged `machina-launch` keeps the system allocator, so no extra C
//! code runs as root.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (v3's `mi_option_e`; the sys crate
/// names only the options common to v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Never hand freed memory back to the kernel. mimalloc asks for
    // transparent huge pages for its arena and, by default, returns freed
    // 64 KiB pages with MADV_DONTNEED: each one is zeroed again by the next
    // page fault. `machina args` over 10,000 VMs made 100 such calls and
    // spent about 5% of its time in the kernel clearing pages. machina's
    // commands are short-lived, or hold steady memory while they wait.
    // SAFETY: mi_option_set stores an option value; it is called before
    // any thread starts (it is not thread-safe), and -1 is the documented
    // "no purging" value of this option.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    std::process::exit(machina::cli::main());
}

#[cfg(test)]
mod tests {
    /// The option index is purge_delay's: its default is v3's 1000 ms,
    /// and setting it changes what mimalloc reports.
    #[test]
    fn purge_delay_option_index() {
        // SAFETY: reading and setting an option value, in one test.
        unsafe {
            let default = libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY);
            assert_eq!(default, 1000);
            libmimalloc_sys::mi_option_set(super::MI_OPTION_PURGE_DELAY, -1);
            assert_eq!(
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                -1
            );
        }
    }
}
