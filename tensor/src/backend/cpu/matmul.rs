//! Matrix multiplication: batched, broadcasting over batch dimensions, any operand strides.
//!
//! The algorithm is the Goto/BLIS decomposition (Goto & van de Geijn, "Anatomy of
//! High-Performance Matrix Multiplication", 2008): for cache-sized blocks of k and n, a block of B
//! is packed into `NR`-wide column slivers and a block of A into `MR`-tall row slivers; a
//! register-blocked micro-kernel then multiplies one sliver pair into an `MR × NR` tile of
//! accumulators. Packing reads the operands through their strides, which is why transposed
//! operands (`a.t()`) cost no copy. Threads split the batch and the rows of each product.

use crate::backend::Operand;
use crate::dtype::FloatElement;
use crate::error::Result;
use crate::layout::Layout;
use crate::parallel::{num_threads, pool};
use crate::storage::Storage;
use crate::with_float_type;
use rayon::prelude::*;

/// Rows of the micro-kernel tile.
const MR: usize = 6;
/// Columns of the micro-kernel tile. 6 × 16 f32 accumulators fill 12 of the 16 AVX2 registers.
const NR: usize = 16;
/// Rows of A per packed block (sized for the L2 cache).
const MC: usize = 64;
/// Depth of a packed block (an `MR × KC` sliver of A and a `KC × NR` sliver of B fit in L1).
const KC: usize = 256;
/// Columns of B per packed block (sized for the L3 cache).
const NC: usize = 1024;
/// Products below this many multiply-adds run on the calling thread: waking the pool costs
/// more than they do.
const PARALLEL_MACS: usize = 1 << 20;

/// A strided matrix view into a flat buffer.
#[derive(Clone, Copy)]
struct MatrixView<'a, T> {
    data: &'a [T],
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<T: Copy> MatrixView<'_, T> {
    #[inline]
    fn at(&self, row: usize, col: usize) -> T {
        self.data[self.offset + row * self.row_stride + col * self.col_stride]
    }
}

/// Packs rows `rows` × depth `depth` of A into MR-tall slivers, column by column, zero-padded.
fn pack_a<T: FloatElement>(
    a: MatrixView<T>,
    rows: std::ops::Range<usize>,
    depth: std::ops::Range<usize>,
    packed: &mut Vec<T>,
) {
    let kc = depth.len();
    packed.clear();
    packed.resize(rows.len().next_multiple_of(MR) * kc, T::zero());
    for (s, sliver) in rows.clone().step_by(MR).enumerate() {
        let block = &mut packed[s * kc * MR..(s + 1) * kc * MR];
        for i in 0..MR.min(rows.end - sliver) {
            if a.col_stride == 1 {
                // Row-major A: read each row of the sliver as one contiguous run.
                let start = a.offset + (sliver + i) * a.row_stride + depth.start;
                for (p, &v) in a.data[start..start + kc].iter().enumerate() {
                    block[p * MR + i] = v;
                }
            } else {
                for (p, k) in depth.clone().enumerate() {
                    block[p * MR + i] = a.at(sliver + i, k);
                }
            }
        }
    }
}

/// Packs depth `depth` × columns `cols` of B into NR-wide slivers, row by row, zero-padded.
fn pack_b<T: FloatElement>(
    b: MatrixView<T>,
    depth: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    packed: &mut Vec<T>,
) {
    packed.clear();
    for sliver in cols.clone().step_by(NR) {
        let width = NR.min(cols.end - sliver);
        for p in depth.clone() {
            if b.col_stride == 1 {
                // Row-major B: each sliver row is a contiguous run.
                let start = b.offset + p * b.row_stride + sliver;
                packed.extend_from_slice(&b.data[start..start + width]);
            } else {
                packed.extend((sliver..sliver + width).map(|j| b.at(p, j)));
            }
            packed.extend(std::iter::repeat_n(T::zero(), NR - width));
        }
    }
}

/// The register tile: acc[i][j] = Σ_p a[p][i] · b[p][j] over one packed sliver pair.
/// `FUSED` uses fused multiply-add, worth it only where the CPU has an FMA instruction.
#[inline(always)]
fn micro_kernel_body<T: FloatElement, const FUSED: bool>(
    depth: usize,
    a: &[T],
    b: &[T],
) -> [[T; NR]; MR] {
    let mut acc = [[T::zero(); NR]; MR];
    for p in 0..depth {
        let a: &[T; MR] = a[p * MR..p * MR + MR].try_into().unwrap();
        let b: &[T; NR] = b[p * NR..p * NR + NR].try_into().unwrap();
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = if FUSED {
                    a[i].mul_add(b[j], acc[i][j])
                } else {
                    acc[i][j] + a[i] * b[j]
                };
            }
        }
    }
    acc
}

/// The micro-kernel compiled for AVX2 + FMA, chosen at run time where the CPU supports it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_kernel_avx2<T: FloatElement>(depth: usize, a: &[T], b: &[T]) -> [[T; NR]; MR] {
    micro_kernel_body::<T, true>(depth, a, b)
}

/// The micro-kernel compiled for AVX-512: one 16-lane register per tile row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn micro_kernel_avx512<T: FloatElement>(depth: usize, a: &[T], b: &[T]) -> [[T; NR]; MR] {
    micro_kernel_body::<T, true>(depth, a, b)
}

fn micro_kernel<T: FloatElement>(depth: usize, a: &[T], b: &[T]) -> [[T; NR]; MR] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { micro_kernel_avx512(depth, a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { micro_kernel_avx2(depth, a, b) };
    }
    micro_kernel_body::<T, false>(depth, a, b)
}

/// Multiplies one tile-row block: out += A[rows, depth] · packed B block, where `out` holds
/// rows `rows` of the row-major result (n columns) and `cols` is the packed block's column range.
fn multiply_block<T: FloatElement>(
    a: MatrixView<T>,
    packed_b: &[T],
    rows: std::ops::Range<usize>,
    depth: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    n: usize,
    out: &mut [T],
) {
    let kc = depth.len();
    let mut packed_a = Vec::with_capacity(rows.len().next_multiple_of(MR) * kc);
    pack_a(a, rows.clone(), depth, &mut packed_a);
    for (sj, jr) in cols.clone().step_by(NR).enumerate() {
        let b_sliver = &packed_b[sj * kc * NR..(sj + 1) * kc * NR];
        for (si, ir) in rows.clone().step_by(MR).enumerate() {
            let tile = micro_kernel(kc, &packed_a[si * kc * MR..(si + 1) * kc * MR], b_sliver);
            let width = NR.min(cols.end - jr);
            for (i, tile_row) in tile.iter().enumerate().take(rows.end - ir) {
                let start = (ir + i - rows.start) * n + jr;
                for (o, &v) in out[start..start + width].iter_mut().zip(tile_row) {
                    *o += v;
                }
            }
        }
    }
}

/// out = A · B for one m × k by k × n product, `out` row-major. B is packed once per
/// (KC × NC) block and shared; the row blocks of A are spread over the pool when `parallel`.
fn gemm<T: FloatElement>(
    a: MatrixView<T>,
    b: MatrixView<T>,
    (m, k, n): (usize, usize, usize),
    out: &mut [T],
    parallel: bool,
) {
    out.iter_mut().for_each(|o| *o = T::zero());
    // Rows per task: a few tasks per thread, a multiple of MR, at most MC.
    let rows_per_task = if parallel {
        m.div_ceil(2 * num_threads())
            .next_multiple_of(MR)
            .clamp(MR, MC)
    } else {
        MC
    };
    let mut packed_b = Vec::new();
    for jc in (0..n).step_by(NC) {
        let cols = jc..(jc + NC).min(n);
        for pc in (0..k).step_by(KC) {
            let depth = pc..(pc + KC).min(k);
            pack_b(b, depth.clone(), cols.clone(), &mut packed_b);
            let run = |(task, out): (usize, &mut [T])| {
                let rows = task * rows_per_task..((task + 1) * rows_per_task).min(m);
                multiply_block(a, &packed_b, rows, depth.clone(), cols.clone(), n, out);
            };
            if parallel {
                out.par_chunks_mut(rows_per_task * n)
                    .enumerate()
                    .for_each(run);
            } else {
                out.chunks_mut(rows_per_task * n).enumerate().for_each(run);
            }
        }
    }
}

/// Storage offsets of the first element of every matrix in a batch, row-major over the batch.
fn batch_offsets(t: &Operand) -> Vec<usize> {
    let r = t.rank();
    let layout = t.layout();
    Layout::new(
        layout.shape()[..r - 2].to_vec(),
        layout.strides()[..r - 2].to_vec(),
        layout.offset(),
    )
    .offsets()
    .collect()
}

fn matmul_typed<T: FloatElement>(
    a: &Operand,
    b: &Operand,
    batch: &[usize],
    m: usize,
    k: usize,
    n: usize,
) -> Result<Storage> {
    let a_data = T::slice(a.storage()).expect("dtype checked");
    let b_data = T::slice(b.storage()).expect("dtype checked");
    let (a_offsets, b_offsets) = (batch_offsets(a), batch_offsets(b));
    let view = |t: &Operand, data, offset| {
        let s = t.layout().strides();
        MatrixView {
            data,
            offset,
            row_stride: s[t.rank() - 2],
            col_stride: s[t.rank() - 1],
        }
    };
    let batches: usize = batch.iter().product();
    let mut out = vec![T::zero(); batches * m * n];
    let large = batches * m * n * k >= PARALLEL_MACS;
    // Many products: one per task. Few large ones: split the rows of each.
    let across_batch = large && batches >= num_threads();
    let run = |(index, out): (usize, &mut [T])| {
        let (av, bv) = (
            view(a, a_data, a_offsets[index]),
            view(b, b_data, b_offsets[index]),
        );
        gemm(av, bv, (m, k, n), out, large && !across_batch);
    };
    if m * n > 0 {
        pool().install(|| {
            if across_batch {
                out.par_chunks_mut(m * n).enumerate().for_each(run);
            } else {
                out.chunks_mut(m * n).enumerate().for_each(run);
            }
        });
    }
    Ok(T::into_storage(out))
}

/// `[.., m, k] · [.., k, n]` with the batch dims broadcast to `batch`.
pub(super) fn matmul(a: &Operand, b: &Operand, batch: &[usize]) -> Result<Storage> {
    let (m, k) = (a.shape()[a.rank() - 2], a.shape()[a.rank() - 1]);
    let n = b.shape()[b.rank() - 1];
    let a = a.broadcast_to(&[batch, &[m, k]].concat())?;
    let b = b.broadcast_to(&[batch, &[k, n]].concat())?;
    with_float_type!(a.dtype(), "matmul", T => matmul_typed::<T>(&a, &b, batch, m, k, n))
}
