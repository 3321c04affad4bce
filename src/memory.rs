//! Keeping the resident size close to what the process uses.
//!
//! Collections allocate and free hundreds of thousands of small attribute
//! sets at a time. glibc's allocator gives each thread that contends for
//! the heap an arena of its own (up to eight per core) and keeps what is
//! freed, so without these the resident size would stay at the largest
//! collection's peak, spread over many arenas. Elsewhere (musl, macOS)
//! both are no-ops.

/// Caps glibc's malloc arenas at two. Call once, at start, before other
/// threads exist.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands memory freed by a large collection back to the system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}
