use std::process::ExitCode;

fn main() -> ExitCode {
    keep_freed_memory();
    ExitCode::from(reprise::cli::main())
}

/// A transfer allocates and frees a buffer per SSH packet (libssh2) and per block: glibc would
/// give the top of its heap back to the system after each free and fault fresh zeroed pages in
/// again for the next, a good part of the CPU time of a stream. Keeping up to 64 MiB of freed
/// memory stops that churn; the peak memory does not change.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
