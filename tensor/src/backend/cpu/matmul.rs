//! Matrix multiplication on the CPU, batched and grouped, with any operand strides: one
//! engine for both.
//!
//! The algorithm is the Goto/BLIS decomposition (Goto & van de Geijn, "Anatomy of
//! High-Performance Matrix Multiplication", 2008): for cache-sized blocks of the depth k, B is
//! packed into `NR`-wide column slivers and a block of A into `MR`-tall row slivers; a
//! register-blocked micro-kernel then multiplies one sliver pair into an `MR × NR` tile of
//! accumulators. Packing reads the operands through their strides, which is why transposed
//! operands (`a.t()`, a linear layer's weight) cost no copy.
//!
//! The engine multiplies a list of products that share n — the experts of a MoE layer, each
//! with its own rows and weight (a grouped GEMM, as MegaBlocks does on a GPU: Gale et al.,
//! 2022), or the matrices of a batch. It runs as two parallel jobs over the whole list: every
//! product's B is packed once (tasks over product × depth block), then tasks over product × row
//! tile multiply, each writing its own rows of the output. Experts of any load share the pool
//! in one job, and no thread waits for a small expert.

use crate::backend::Operand;
use crate::descriptors::GroupSizes;
use crate::dtype::FloatElement;
use crate::error::Result;
use crate::layout::Layout;
use crate::parallel::{num_threads, pool};
use crate::storage::Storage;
use crate::with_float_type;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
mod simd;

// The micro-kernel tile is MR × NR, const parameters of the engine chosen per CPU in
// [`grouped_gemm`]: 6 × 16 (12 of the 16 AVX2 registers for f32), or 12 × 32 for f32 with
// AVX-512 (24 of its 32 registers: enough independent FMA chains to hide their latency).

/// Rows of A per task at most (a packed block of A stays in the L2 cache).
const MC: usize = 64;
/// Depth of a packed block. It fixes each element's order of additions (the sum over a block,
/// then the blocks in order), so every tiling and thread count gives the same bits.
const KC: usize = 256;
/// Columns of B per pass over a task's rows (a `KC × NC` block of packed B stays in L2).
const NC: usize = 256;
/// Jobs below this many multiply-adds run on the calling thread: waking the pool costs
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

/// One product of the engine: `m × k` A times `k × n` B.
struct Product<'a, T> {
    a: MatrixView<'a, T>,
    b: MatrixView<'a, T>,
    m: usize,
    k: usize,
}

/// Packs `W` runs of `data`, run j's `depth` elements contiguous from `first_run + j ×
/// run_stride`, into `block` as depth rows of W (`block[p·W + j]` = run j's element p) with the
/// SIMD packer for this CPU and width, if there is one (f32 only); returns whether it did.
fn pack_interleaved_simd<T: FloatElement, const W: usize>(
    data: &[T],
    (first_run, run_stride): (usize, usize),
    depth: usize,
    block: &mut [MaybeUninit<T>],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == crate::DType::F32 {
        let packer: Option<simd::InterleavingPacker> = match W {
            // The widths of the two tiles' slivers: NR (B) and MR (A).
            32 | 12 if std::is_x86_feature_detected!("avx512f") => {
                Some(simd::pack_interleaved_avx512::<W>)
            }
            16 | 6 if std::is_x86_feature_detected!("avx2") => {
                Some(simd::pack_interleaved_avx2::<W>)
            }
            _ => None,
        };
        if let Some(packer) = packer {
            // SAFETY: T is f32 (the only Element of dtype F32), reinterpreted as itself; the
            // CPU has the packer's instruction set.
            unsafe {
                let data = std::slice::from_raw_parts(data.as_ptr().cast(), data.len());
                let block = std::slice::from_raw_parts_mut(block.as_mut_ptr().cast(), block.len());
                packer(data, first_run, run_stride, depth, block);
            }
            return true;
        }
    }
    false
}

/// Packs rows `rows` × depth `depth` of A into MR-tall slivers, column by column, zero-padded.
fn pack_a<T: FloatElement, const MR: usize>(
    a: MatrixView<T>,
    rows: Range<usize>,
    depth: Range<usize>,
    packed: &mut Vec<T>,
) {
    let kc = depth.len();
    packed.clear();
    packed.resize(rows.len().next_multiple_of(MR) * kc, T::zero());
    for (s, sliver) in rows.clone().step_by(MR).enumerate() {
        let block = &mut packed[s * kc * MR..(s + 1) * kc * MR];
        let height = MR.min(rows.end - sliver);
        if a.row_stride == 1 && height == MR {
            // Column-major A (a transposed view): each sliver column is one contiguous run.
            for (column, k) in block.chunks_exact_mut(MR).zip(depth.clone()) {
                let start = a.offset + k * a.col_stride + sliver;
                let run: &[T; MR] = a.data[start..start + MR].try_into().expect("MR long");
                column.copy_from_slice(run);
            }
            continue;
        }
        if a.col_stride == 1 && height == MR {
            // Row-major A: the sliver's rows are MR runs along the depth.
            let first_row = a.offset + sliver * a.row_stride + depth.start;
            // SAFETY: MaybeUninit<T> has T's layout, and only initialised values are written.
            let block =
                unsafe { std::slice::from_raw_parts_mut(block.as_mut_ptr().cast(), block.len()) };
            if pack_interleaved_simd::<T, MR>(a.data, (first_row, a.row_stride), kc, block) {
                continue;
            }
        }
        for i in 0..height {
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

/// Packs depth `depth` × all `n` columns of B into NR-wide slivers, row by row, zero-padded,
/// into `packed` (`n` rounded up to NR, times the depth). Every element is written, so the
/// buffer starts uninitialised: zeroing it first would be one more pass over it.
fn pack_b<T: FloatElement, const NR: usize>(
    b: MatrixView<T>,
    depth: Range<usize>,
    n: usize,
    packed: &mut [MaybeUninit<T>],
) {
    let kc = depth.len();
    for (s, block) in packed.chunks_mut(kc * NR).enumerate() {
        let sliver = s * NR;
        let width = NR.min(n - sliver);
        if width < NR {
            block.fill(MaybeUninit::new(T::zero()));
        }
        if b.col_stride == 1 {
            // Row-major B: each sliver row is a contiguous run.
            for (p, row) in depth.clone().zip(block.chunks_exact_mut(NR)) {
                let start = b.offset + p * b.row_stride + sliver;
                for (packed, &v) in row.iter_mut().zip(&b.data[start..start + width]) {
                    packed.write(v);
                }
            }
        } else {
            // Any other strides, e.g. a transposed weight (each column a run along the depth):
            // the SIMD interleaving pack where it applies, else a tiled transpose. For TILE depth steps at a time, each column's run is read and
            // written down its place in TILE sliver rows, which stay in L1 while the columns
            // go by (a column at a time over the whole depth would write a cache line per
            // element).
            let first_column = b.offset + sliver * b.col_stride + depth.start;
            if width == NR
                && b.row_stride == 1
                && pack_interleaved_simd::<T, NR>(b.data, (first_column, b.col_stride), kc, block)
            {
                continue;
            }
            const TILE: usize = 16;
            for (t, rows) in block.chunks_mut(TILE * NR).enumerate() {
                let first = depth.start + t * TILE;
                for j in 0..width {
                    let column = b.offset + (sliver + j) * b.col_stride + first * b.row_stride;
                    for (p, row) in rows.chunks_exact_mut(NR).enumerate() {
                        row[j].write(b.data[column + p * b.row_stride]);
                    }
                }
            }
        }
    }
}

/// The register tile: acc[i][j] = Σ_p a[p][i] · b[p][j] over one packed sliver pair.
/// `FUSED` uses fused multiply-add, worth it only where the CPU has an FMA instruction.
#[inline(always)]
fn micro_kernel_body<T: FloatElement, const MR: usize, const NR: usize, const FUSED: bool>(
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
unsafe fn micro_kernel_avx2<T: FloatElement, const MR: usize, const NR: usize>(
    depth: usize,
    a: &[T],
    b: &[T],
) -> [[T; NR]; MR] {
    micro_kernel_body::<T, MR, NR, true>(depth, a, b)
}

/// The micro-kernel compiled for AVX-512: a tile row is NR / 16 registers of f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn micro_kernel_avx512<T: FloatElement, const MR: usize, const NR: usize>(
    depth: usize,
    a: &[T],
    b: &[T],
) -> [[T; NR]; MR] {
    micro_kernel_body::<T, MR, NR, true>(depth, a, b)
}

/// Where a micro-kernel puts its tile: `MR` rows of `NR` elements of `out`, `row_stride`
/// apart. The first depth block writes the tile (plus 0.0, which is what adding it to a zeroed
/// output would round to), so the output need not be zeroed first; later blocks add to it.
struct TileOut<'a, T> {
    out: &'a mut [MaybeUninit<T>],
    row_stride: usize,
    first_block: bool,
}

impl<T: FloatElement> TileOut<'_, T> {
    /// Stores `tile`'s first `rows` rows and `width` columns.
    fn store<const NR: usize>(&mut self, tile: &[[T; NR]], rows: usize, width: usize) {
        for (i, tile_row) in tile.iter().enumerate().take(rows) {
            let start = i * self.row_stride;
            let out = &mut self.out[start..start + width];
            for (o, &v) in out.iter_mut().zip(tile_row) {
                // SAFETY (assume_init_read): after the first block every element was written.
                let sum = if self.first_block {
                    T::zero()
                } else {
                    unsafe { o.assume_init_read() }
                };
                o.write(sum + v);
            }
        }
    }
}

/// Adds (or writes, for the first depth block) A sliver · B sliver into a full MR × NR tile.
fn micro_kernel<T: FloatElement, const MR: usize, const NR: usize>(
    depth: usize,
    a: &[T],
    b: &[T],
    mut out: TileOut<T>,
) {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == crate::DType::F32 {
        let wide = (MR, NR) == (12, 32) && std::is_x86_feature_detected!("avx512f");
        let narrow = (MR, NR) == (6, 16)
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma");
        if wide || narrow {
            // SAFETY: T is f32 (the only Element of dtype F32), so the slices are
            // reinterpreted as themselves.
            let (a, b, out) = unsafe {
                let as_f32 = |x: &[T]| std::slice::from_raw_parts(x.as_ptr().cast(), x.len());
                let tile =
                    std::slice::from_raw_parts_mut(out.out.as_mut_ptr().cast(), out.out.len());
                let (row_stride, first_block) = (out.row_stride, out.first_block);
                (
                    as_f32(a),
                    as_f32(b),
                    TileOut {
                        out: tile,
                        row_stride,
                        first_block,
                    },
                )
            };
            // SAFETY: the CPU has the instruction set of the kernel chosen.
            return unsafe {
                if wide {
                    simd::tile_12x32_avx512(depth, a, b, out)
                } else {
                    simd::tile_6x16_avx2(depth, a, b, out)
                }
            };
        }
    }
    let tile = micro_kernel_tile::<T, MR, NR>(depth, a, b);
    out.store(&tile, MR, NR);
}

/// The tile `micro_kernel_body` computes, compiled for the best instruction set the CPU has.
fn micro_kernel_tile<T: FloatElement, const MR: usize, const NR: usize>(
    depth: usize,
    a: &[T],
    b: &[T],
) -> [[T; NR]; MR] {
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
    micro_kernel_body::<T, MR, NR, false>(depth, a, b)
}

/// Rows `rows` of one product: `out` (those rows of its row-major `m × n` result) =
/// A[rows] · B, B packed by [`pack_b`] block after block of the depth (`n_padded` columns).
/// Within a depth block an A sliver stays in L1 while the B slivers of NC columns stream by.
/// Every element of `out` is written.
fn multiply_rows<T: FloatElement, const MR: usize, const NR: usize>(
    product: &Product<T>,
    packed_b: &[T],
    rows: Range<usize>,
    (n, n_padded): (usize, usize),
    out: &mut [MaybeUninit<T>],
) {
    if product.k == 0 {
        out.fill(MaybeUninit::new(T::zero()));
        return;
    }
    let mut packed_a = Vec::with_capacity(rows.len().next_multiple_of(MR) * KC);
    for pc in (0..product.k).step_by(KC) {
        let depth = pc..(pc + KC).min(product.k);
        let kc = depth.len();
        pack_a::<T, MR>(product.a, rows.clone(), depth, &mut packed_a);
        let block = &packed_b[pc * n_padded..(pc + kc) * n_padded];
        for jc in (0..n).step_by(NC) {
            for (si, ir) in rows.clone().step_by(MR).enumerate() {
                let a_sliver = &packed_a[si * kc * MR..(si + 1) * kc * MR];
                let height = MR.min(rows.end - ir);
                for jr in (jc..(jc + NC).min(n)).step_by(NR) {
                    let b_sliver = &block[jr * kc..(jr + NR) * kc];
                    let width = NR.min(n - jr);
                    let start = (ir - rows.start) * n + jr;
                    let first_block = pc == 0;
                    if (height, width) == (MR, NR) {
                        let out = &mut out[start..start + (MR - 1) * n + NR];
                        let row_stride = n;
                        micro_kernel::<T, MR, NR>(
                            kc,
                            a_sliver,
                            b_sliver,
                            TileOut {
                                out,
                                row_stride,
                                first_block,
                            },
                        );
                    } else {
                        // An edge tile: computed whole into a tile of its own, stored in part.
                        let mut tile = [[MaybeUninit::new(T::zero()); NR]; MR];
                        let whole = TileOut {
                            out: tile.as_flattened_mut(),
                            row_stride: NR,
                            first_block: true,
                        };
                        micro_kernel::<T, MR, NR>(kc, a_sliver, b_sliver, whole);
                        // SAFETY: the kernel wrote every element of the tile.
                        let tile = tile.map(|row| row.map(|v| unsafe { v.assume_init() }));
                        let out = &mut out[start..];
                        TileOut {
                            out,
                            row_stride: n,
                            first_block,
                        }
                        .store(&tile, height, width);
                    }
                }
            }
        }
    }
}

/// `out` = the products' results one after another (product i: `m_i × n`, row-major). Each
/// element is the sum over the depth blocks in order of its micro-kernel tiles, whatever the
/// tiling of rows and tasks: the same bits as one product at a time.
fn grouped_gemm<T: FloatElement>(products: &[Product<T>], n: usize) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == crate::DType::F32 && std::is_x86_feature_detected!("avx512f") {
        return gemm_engine::<T, 12, 32>(products, n);
    }
    gemm_engine::<T, 6, 16>(products, n)
}

/// [`grouped_gemm`] with an MR × NR micro-kernel tile.
fn gemm_engine<T: FloatElement, const MR: usize, const NR: usize>(
    products: &[Product<T>],
    n: usize,
) -> Vec<T> {
    let n_padded = n.next_multiple_of(NR);
    let rows: usize = products.iter().map(|p| p.m).sum();
    let macs: usize = products.iter().map(|p| p.m * p.k * n).sum();
    if macs == 0 {
        return vec![T::zero(); rows * n];
    }
    let parallel = macs >= PARALLEL_MACS;

    // Pass 1: every product's B, packed once (none for a product without rows).
    let packed_len = |p: &Product<T>| if p.m == 0 { 0 } else { p.k * n_padded };
    let packed_total = products.iter().map(packed_len).sum();
    let mut packed: Vec<T> = Vec::with_capacity(packed_total);
    let mut pack_tasks = Vec::new();
    let mut rest = &mut packed.spare_capacity_mut()[..packed_total];
    for product in products {
        let (mine, after) = rest.split_at_mut(packed_len(product));
        rest = after;
        let mut blocks = mine;
        for pc in (0..product.k * usize::from(product.m > 0)).step_by(KC) {
            let depth = pc..(pc + KC).min(product.k);
            let (block, after) = blocks.split_at_mut(depth.len() * n_padded);
            blocks = after;
            pack_tasks.push((product.b, depth, block));
        }
    }
    let pack = |(b, depth, block): (MatrixView<T>, Range<usize>, &mut [MaybeUninit<T>])| {
        pack_b::<T, NR>(b, depth, n, block)
    };
    if parallel {
        pool().install(|| pack_tasks.into_par_iter().for_each(pack));
    } else {
        pack_tasks.into_iter().for_each(pack);
    }
    // SAFETY: the tasks cover the first `packed_total` elements, and pack_b writes every
    // element of its block.
    unsafe { packed.set_len(packed_total) };

    // Pass 2: tasks of at most MC rows of one product, each writing its own output rows.
    let rows_per_task = rows
        .div_ceil(4 * num_threads())
        .next_multiple_of(MR)
        .clamp(MR, MC.next_multiple_of(MR));
    let mut tasks = Vec::new();
    let mut out: Vec<T> = Vec::with_capacity(rows * n);
    let (mut rest, mut packed_rest) = (&mut out.spare_capacity_mut()[..rows * n], &packed[..]);
    for product in products {
        let (mine, after) = rest.split_at_mut(product.m * n);
        let (packed_b, packed_after) = packed_rest.split_at(packed_len(product));
        (rest, packed_rest) = (after, packed_after);
        for (t, task_out) in mine.chunks_mut(rows_per_task * n).enumerate() {
            let start = t * rows_per_task;
            tasks.push((
                product,
                packed_b,
                start..start + task_out.len() / n,
                task_out,
            ));
        }
    }
    type Task<'a, T> = (
        &'a Product<'a, T>,
        &'a [T],
        Range<usize>,
        &'a mut [MaybeUninit<T>],
    );
    let multiply = |(product, packed_b, rows, out): Task<T>| {
        multiply_rows::<T, MR, NR>(product, packed_b, rows, (n, n_padded), out)
    };
    if parallel {
        pool().install(|| tasks.into_par_iter().for_each(multiply));
    } else {
        tasks.into_iter().for_each(multiply);
    }
    // SAFETY: the tasks cover every row of every product, and multiply_rows writes each
    // element of its rows.
    unsafe { out.set_len(rows * n) };
    out
}

/// A matrix of `t`'s storage: rows and columns along dims `row_dim` and `col_dim` of its
/// layout, starting `offset` elements into the storage.
fn view<'a, T: FloatElement>(
    t: &Operand<'a>,
    offset: usize,
    (row_dim, col_dim): (usize, usize),
) -> MatrixView<'a, T> {
    let strides = t.layout().strides();
    MatrixView {
        data: T::slice(t.storage()).expect("dtype checked"),
        offset,
        row_stride: strides[row_dim],
        col_stride: strides[col_dim],
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

/// `[.., m, k] · [.., k, n]` with the batch dims broadcast to `batch`: one product per
/// matrix of the batch.
pub(super) fn matmul(a: &Operand, b: &Operand, batch: &[usize]) -> Result<Storage> {
    let (m, k) = (a.shape()[a.rank() - 2], a.shape()[a.rank() - 1]);
    let n = b.shape()[b.rank() - 1];
    let a = a.broadcast_to(&[batch, &[m, k]].concat())?;
    let b = b.broadcast_to(&[batch, &[k, n]].concat())?;
    let last_two = |t: &Operand| (t.rank() - 2, t.rank() - 1);
    with_float_type!(a.dtype(), "matmul", T => {
        let products: Vec<Product<T>> = batch_offsets(&a)
            .into_iter()
            .zip(batch_offsets(&b))
            .map(|(a_offset, b_offset)| Product {
                a: view(&a, a_offset, last_two(&a)),
                b: view(&b, b_offset, last_two(&b)),
                m,
                k,
            })
            .collect();
        Ok(T::into_storage(grouped_gemm(&products, n)))
    })
}

/// The first row of each group of consecutive rows.
fn group_starts(sizes: &[usize]) -> impl Iterator<Item = usize> + '_ {
    sizes.iter().scan(0, |start, &size| {
        let first = *start;
        *start += size;
        Some(first)
    })
}

/// `y[rows_g] = x[rows_g] · op(W_g)` for every group in one job (see `Tensor::grouped_matmul`):
/// `weights` `[G, out, in]` with op(W) = Wᵀ when `transpose_weights`, else `[G, in, out]`.
pub(super) fn grouped_matmul(
    x: &Operand,
    groups: &GroupSizes,
    weights: &Operand,
    transpose_weights: bool,
) -> Result<Storage> {
    let sizes = groups.to_host()?;
    let (x_strides, w_strides) = (x.layout().strides(), weights.layout().strides());
    let (k, n) = (
        x.shape()[1],
        weights.shape()[if transpose_weights { 1 } else { 2 }],
    );
    // B = op(W_g): its rows run along W's input dim.
    let b_dims = if transpose_weights { (2, 1) } else { (1, 2) };
    with_float_type!(x.dtype(), "grouped_matmul", T => {
        let products: Vec<Product<T>> = group_starts(sizes)
            .zip(sizes)
            .enumerate()
            .map(|(g, (start, &m))| Product {
                a: view(x, x.layout().offset() + start * x_strides[0], (0, 1)),
                b: view(weights, weights.layout().offset() + g * w_strides[0], b_dims),
                m,
                k,
            })
            .collect();
        Ok(T::into_storage(grouped_gemm(&products, n)))
    })
}

/// `dW[g] = dy_gᵀ · x_g` for every group in one job (`[G, out, in]`; zero for an empty group).
pub(super) fn grouped_weight_grads(
    dy: &Operand,
    x: &Operand,
    groups: &GroupSizes,
) -> Result<Storage> {
    let sizes = groups.to_host()?;
    let (dy_strides, x_strides) = (dy.layout().strides(), x.layout().strides());
    let (out, inner) = (dy.shape()[1], x.shape()[1]);
    with_float_type!(x.dtype(), "grouped_weight_grads", T => {
        let products: Vec<Product<T>> = group_starts(sizes)
            .zip(sizes)
            .map(|(start, &rows)| Product {
                // A = dy_gᵀ: its rows are dy's columns.
                a: view(dy, dy.layout().offset() + start * dy_strides[0], (1, 0)),
                b: view(x, x.layout().offset() + start * x_strides[0], (0, 1)),
                m: out,
                k: rows,
            })
            .collect();
        Ok(T::into_storage(grouped_gemm(&products, inner)))
    })
}
