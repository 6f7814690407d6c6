//! The persistent worker pool every CPU kernel runs on.
//!
//! One `rayon` pool is built on first use with all cores, or `DITMOE_THREADS` threads when that
//! variable is set, and lives for the whole process: kernels hand it work, they never spawn.

use rayon::prelude::*;
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

/// Number of worker threads in the pool.
pub fn num_threads() -> usize {
    pool().current_num_threads()
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
