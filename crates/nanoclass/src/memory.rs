//! The process's memory: its resident set size, and handing freed heap memory back to the
//! system after a training, so that a long-running studio on a small board (a Jetson Nano has
//! 4 GB for everything) returns near its idle footprint once a training ends.

/// Resident set size of this process in bytes (Linux: `/proc/self/statm`'s second field times
/// the page size); `None` elsewhere or when it cannot be read.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf reads a constant of the system; no memory is touched.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(page).ok().map(|p| p * pages)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pages;
        None
    }
}

/// Returns the heap memory freed by a finished job to the system (glibc: `malloc_trim(0)`,
/// which releases the free pages of every malloc arena, not only the top of the heap). A
/// training's tensors are freed when it ends, but glibc keeps the pages in its arenas for
/// reuse, so without this the process stays at its training peak. Returns whether anything
/// was released; elsewhere it does nothing.
pub fn return_freed_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages of glibc's own arenas to the kernel; it
        // does not touch allocated memory.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_heap_goes_back_to_the_system() {
        // Many medium blocks (below glibc's mmap threshold, so they live in a malloc arena),
        // all touched, then a block after them that stays: freeing the rest leaves a hole
        // that glibc keeps resident (it trims only the top of a heap by itself), as a
        // training's freed tensors are kept.
        let before = resident_bytes().unwrap();
        let blocks: Vec<Vec<u8>> = (0..4000)
            .map(|i| vec![(i % 251) as u8 + 1; 64 * 1024])
            .collect();
        let pin = vec![7u8; 64 * 1024];
        let held = resident_bytes().unwrap();
        assert!(held > before + 200 * 1024 * 1024, "{before} -> {held}");
        drop(blocks);
        let freed = resident_bytes().unwrap();
        assert!(
            freed + 50 * 1024 * 1024 > held,
            "glibc kept {} of {} MiB resident after the free",
            freed >> 20,
            held >> 20
        );
        assert!(return_freed_heap());
        let after = resident_bytes().unwrap();
        assert!(
            after + 200 * 1024 * 1024 < freed,
            "{} MiB resident before the trim, {} MiB after",
            freed >> 20,
            after >> 20
        );
        assert_eq!(pin[0], 7);
    }
}
