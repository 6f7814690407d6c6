//! The persistent worker pool every CPU kernel runs on.
//!
//! One `rayon` pool is built on first use with all cores, or `DITMOE_THREADS` threads when that
//! variable is set, and lives for the whole process: kernels hand it work, they never spawn.

use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Below this many output elements a kernel runs on the calling thread: handing work to the
/// pool costs a few microseconds, more than the work itself.
pub const PARALLEL_THRESHOLD: usize = 1 << 15;

static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();

/// Threads requested by `DITMOE_THREADS`, or all available cores.
fn requested_threads() -> usize {
    std::env::var("DITMOE_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The process-wide pool.
pub fn pool() -> &'static rayon::ThreadPool {
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(requested_threads())
            .thread_name(|i| format!("ditmoe-worker-{i}"))
            .build()
            .expect("failed to start the ditmoe thread pool")
    })
}

/// Runs `f` on one of the pool's workers, so that the kernels it calls hand their work to the
/// pool from a worker: the calling thread then takes part in the work instead of sleeping until
/// the workers finish and waking again, once per kernel. A training step of a small model is
/// thousands of short kernels, and those hand-offs (a futex sleep and wake each way, an
/// inter-processor interrupt under a hypervisor) cost more than the kernels themselves. The
/// work each kernel splits off, and so every result, is the same either way.
pub fn run_on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Number of worker threads in the pool.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// A new buffer of `len` elements, filled by `f(chunk_index, chunk)` as [`for_each_chunk_mut`]
/// calls it. Each chunk is zeroed by the task that fills it, just before, instead of the whole
/// buffer on the calling thread first: a kernel's output costs one parallel pass, not a serial
/// one and then a parallel one. For a kernel that reads its output as it goes (a softmax row
/// written, then scaled); one that only writes each element once uses [`written_by_chunks`].
pub fn filled_by_chunks<T: Copy + Default + Send>(
    len: usize,
    chunk_len: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    // SAFETY: the closure initialises every element of its chunk before `f` sees it.
    unsafe {
        written_by_chunks(len, chunk_len, work, |i, chunk| {
            chunk.fill(MaybeUninit::new(T::default()));
            // SAFETY: every element of the chunk was just initialised, and MaybeUninit<T>
            // has the layout of T.
            let chunk = &mut *(chunk as *mut [MaybeUninit<T>] as *mut [T]);
            f(i, chunk)
        })
    }
}

/// A new buffer of `len` elements, each written once by `f(chunk_index, chunk)` as
/// [`for_each_chunk_mut`] calls it, never zeroed: an elementwise kernel's output costs only
/// its writes (zeroing first was 4% of a dense DiT-S/2 step, in `memset`).
///
/// # Safety
/// `f` must write every element of each chunk it is given.
pub unsafe fn written_by_chunks<T: Send>(
    len: usize,
    chunk_len: usize,
    work: usize,
    f: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    for_each_chunk_mut(&mut out.spare_capacity_mut()[..len], chunk_len, work, f);
    // SAFETY: the chunks cover the first `len` elements, and the caller's `f` wrote each.
    unsafe { out.set_len(len) };
    out
}

/// Calls `f(chunk_index, chunk)` for consecutive `chunk_len`-sized pieces of `out`, on the pool
/// when the whole job touches at least [`PARALLEL_THRESHOLD`] elements (`work`).
pub fn for_each_chunk_mut<T: Send>(
    out: &mut [T],
    chunk_len: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let chunk_len = chunk_len.max(1);
    if work < PARALLEL_THRESHOLD {
        out.chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        pool().install(|| {
            out.par_chunks_mut(chunk_len)
                .enumerate()
                .for_each(|(i, c)| f(i, c))
        });
    }
}

/// [`for_each_chunk_mut`] over two outputs of one length, cut into the same chunks: for
/// kernels that write two results per element (a fused backward pass's two gradients).
pub fn for_each_chunk_pair_mut<A: Send, B: Send>(
    a: &mut [A],
    b: &mut [B],
    chunk_len: usize,
    work: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    let chunk_len = chunk_len.max(1);
    if work < PARALLEL_THRESHOLD {
        a.chunks_mut(chunk_len)
            .zip(b.chunks_mut(chunk_len))
            .enumerate()
            .for_each(|(i, (x, y))| f(i, x, y));
    } else {
        pool().install(|| {
            a.par_chunks_mut(chunk_len)
                .zip(b.par_chunks_mut(chunk_len))
                .enumerate()
                .for_each(|(i, (x, y))| f(i, x, y))
        });
    }
}

/// A chunk length that splits `len` elements made of `row_len`-sized rows into a few pieces
/// per thread, never splitting a row.
pub fn rows_per_chunk(len: usize, row_len: usize) -> usize {
    let rows = len / row_len.max(1);
    let pieces = 4 * num_threads();
    rows.div_ceil(pieces).max(1) * row_len.max(1)
}
