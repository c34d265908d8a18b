//! glibc malloc tuning for the server: hand memory freed by a training run back to the OS.
//!
//! The `funkrec` binary allocates through mimalloc (`src/main.rs`), which returns
//! freed pages to the OS by itself; glibc's malloc still serves what C code
//! allocates (SQLite's page caches and statements) and any program that links the
//! library without setting an allocator (the tests, `examples/`). This module keeps
//! that part in check.
//!
//! A training run allocates and frees megabytes at a time (the ratings read
//! from the store, the training set, the new model's factor matrices, the
//! file buffer) and publishing drops the previous snapshot's matrices. glibc
//! serves blocks of 128 KiB and more with `mmap` and unmaps them on `free`,
//! but its *dynamic* threshold raises that limit to the largest such block
//! freed so far (up to 32 MiB) and the trim limit to twice that. After the
//! first retrain the model-sized blocks therefore come from the per-thread
//! arenas, whose freed space is kept: resident memory climbed a few MB per
//! retrain while the live heap stayed flat (see `docs/reliability.md`, soak).
//!
//! [`tune`] pins the threshold at glibc's default (which also switches the
//! dynamic adjustment off), so big blocks keep going back on `free`, and caps
//! the arenas at one per core: glibc allows eight per core, and each of the
//! server's threads (runtime workers, one per SQLite connection, blocking
//! pool) otherwise keeps its own arena with its own free space.
//! [`release_free_memory`] runs `malloc_trim` after each run to return the
//! free pages that smaller allocations leave inside the arenas. Both are
//! no-ops on other C libraries.

/// Blocks at least this large are mmapped (glibc's initial default).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Pins glibc's mmap threshold and caps its arenas at one per core; call once
/// when the server starts, before its threads exist. False when glibc refused a
/// setting (it is logged) or the C library is not glibc.
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut accepted = true;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        for (name, param, value) in [
            ("M_MMAP_THRESHOLD", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("M_ARENA_MAX", libc::M_ARENA_MAX, arenas),
        ] {
            // SAFETY: mallopt only sets an allocator parameter; it is thread-safe.
            if unsafe { libc::mallopt(param, value) } != 1 {
                tracing::warn!(param = name, value, "mallopt refused");
                accepted = false;
            }
        }
        accepted
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Returns free memory of every malloc arena to the OS (blocking: call it off
/// the async runtime). True when some memory was released.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
    return unsafe { libc::malloc_trim(0) } == 1;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_accepts_the_settings_and_trims_freed_arena_memory() {
        assert!(super::tune(), "mallopt refused a setting");
        assert!(super::tune(), "the settings can be applied again");
        // 16 MiB in blocks below the mmap threshold: they live in the arena, and
        // freeing them leaves free pages that only a trim returns
        let small: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(small);
        assert!(super::release_free_memory(), "nothing was released");
    }
}
