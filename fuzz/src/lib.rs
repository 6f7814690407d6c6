//! Fuzzing ditmoe's parsers with libFuzzer on stable Rust (see `fuzz/README.md`).
//!
//! [`targets`] holds the targets; each binary in `src/bin/` hands one of them to libFuzzer.
//! This crate also installs [`LimitedAllocator`], so an input that asks for one huge
//! allocation is a finding with a reproducer, not an out-of-memory kill.

pub mod targets;

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest single allocation a parser may make for any input: 1 GiB.
pub const ALLOCATION_LIMIT: usize = 1 << 30;

/// The system allocator, aborting (a finding libFuzzer saves) with a backtrace on any single
/// allocation over [`ALLOCATION_LIMIT`].
pub struct LimitedAllocator;

fn check(size: usize) {
    if size > ALLOCATION_LIMIT {
        // Small allocations (the backtrace's) stay under the limit, so this cannot recurse.
        eprintln!(
            "==ditmoe-fuzz: one allocation of {size} bytes, over the {ALLOCATION_LIMIT}-byte limit, at\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for LimitedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: LimitedAllocator = LimitedAllocator;
