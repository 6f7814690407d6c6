//! Heap accounting and tuning: a counting wrapper around the system allocator, so a program
//! can report its peak memory (`ditmoe ablate` per variant, the attention benchmark per call),
//! and [`keep_freed_memory`], which stops glibc from handing activation buffers back to the
//! kernel between training steps. A binary opts in to counting with
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: ditmoe_tensor::memory::CountingAllocator = ditmoe_tensor::memory::CountingAllocator;
//! ```
//!
//! Without it the counters stay at zero and [`is_counting`] says so.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting live and peak heap bytes.
pub struct CountingAllocator;

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNTING.store(true, Ordering::Relaxed);
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        COUNTING.store(true, Ordering::Relaxed);
        grew(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        grew(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// Whether [`CountingAllocator`] is this program's global allocator.
pub fn is_counting() -> bool {
    COUNTING.load(Ordering::Relaxed)
}

/// Heap bytes allocated now.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The most heap bytes live at once since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak measurement from what is live now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Tells glibc's malloc to keep freed memory in the process (Linux with glibc; a no-op
/// elsewhere). Every training step allocates and frees the same large activation buffers; by
/// default glibc serves big blocks with `mmap` and trims the heap top on free, so the next step
/// page-faults the same memory back in — 14% of a tiny-model training step under `perf`, and
/// 23% of its wall time (60 steps of `tiny-moe`: 10.0 s → 7.3 s on the 2-core dev box).
/// Every thread allocates from the one main arena: glibc otherwise gives each new thread its
/// own arena of 64 MiB mmap'd heaps, which it unmaps when they empty, so a step running on a
/// pool worker (see `parallel::run_on_pool`) page-faulted its buffers in again every time
/// (11% of a DiT-MoE-S/4 step in the kernel's `clear_page` under `perf`).
/// Call it once at the start of `main`. The cost is that the process's resident size stays at
/// its high-water mark.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before any threads
    // allocate concurrently and has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
