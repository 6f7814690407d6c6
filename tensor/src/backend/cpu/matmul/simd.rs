//! The GEMM's f32 hot loops written with x86 intrinsics, once for any vector width: AVX2 + FMA
//! (8 lanes) and AVX-512 (16 lanes).
//!
//! - The register-tile micro-kernel: 6 × 16 with AVX2 (12 of the 16 ymm registers as
//!   accumulators), 12 × 32 with AVX-512 (24 of the 32 zmm registers). The generic body in
//!   `matmul.rs` computes the same tile, but keeps it in memory between calls, checks bounds on
//!   every load and (for the wide tile) spills its accumulators; this one keeps the tile in
//!   registers and adds it straight into the output. Per depth step: `W` loads of a packed B
//!   row, `MR` broadcasts of a packed A column and `MR × W` fused multiply-adds — the generic
//!   body's arithmetic in its order, so the same bits.
//! - The interleaving pack: W runs contiguous along the depth (the columns of a transposed B,
//!   a linear layer's `w.t()`, or the rows of a row-major A) into depth rows of W. Each
//!   LANES × LANES square is loaded as LANES runs and transposed in registers, so every store
//!   writes a register (or its first W lanes) instead of one element.

use super::TileOut;
use std::arch::x86_64::{__m256, __m512};
use std::mem::MaybeUninit;

/// One SIMD register of f32 lanes: what the tile kernel and the transposed pack need of it.
/// Each method is inlined into a caller compiled with the instruction set it uses (the
/// `#[target_feature]` functions below); called anywhere else it is undefined behaviour.
trait F32Lanes: Copy {
    /// f32 lanes per register.
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(from: *const f32) -> Self;
    unsafe fn load(from: *const f32) -> Self;
    unsafe fn store(self, to: *mut f32);
    /// Stores the first `count` lanes (`count` < LANES), leaving the memory after them alone.
    unsafe fn store_first(self, to: *mut f32, count: usize);
    /// self · b + c, rounded once.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    /// Transposes the LANES × LANES square whose rows are `rows` (LANES registers) in place.
    unsafe fn transpose(rows: &mut [Self]);
}

impl F32Lanes for __m256 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { std::arch::x86_64::_mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(from: *const f32) -> Self {
        unsafe { std::arch::x86_64::_mm256_broadcast_ss(&*from) }
    }
    #[inline(always)]
    unsafe fn load(from: *const f32) -> Self {
        unsafe { std::arch::x86_64::_mm256_loadu_ps(from) }
    }
    #[inline(always)]
    unsafe fn store(self, to: *mut f32) {
        unsafe { std::arch::x86_64::_mm256_storeu_ps(to, self) }
    }
    #[inline(always)]
    unsafe fn store_first(self, to: *mut f32, count: usize) {
        use std::arch::x86_64::{_mm256_cmpgt_epi32, _mm256_maskstore_ps};
        use std::arch::x86_64::{_mm256_set1_epi32, _mm256_setr_epi32};
        unsafe {
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let below_count = _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), lane);
            _mm256_maskstore_ps(to, below_count, self)
        }
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        unsafe { std::arch::x86_64::_mm256_fmadd_ps(self, b, c) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        unsafe { std::arch::x86_64::_mm256_add_ps(self, b) }
    }
    /// Unpack pairs of rows, shuffle pairs of pairs, then swap 128-bit halves.
    #[inline(always)]
    unsafe fn transpose(rows: &mut [Self]) {
        use std::arch::x86_64::{_mm256_permute2f128_ps, _mm256_shuffle_ps};
        use std::arch::x86_64::{_mm256_unpackhi_ps, _mm256_unpacklo_ps};
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| rows[i]);
            // t[2g], t[2g + 1]: rows 2g and 2g + 1 interleaved, low and high pairs per lane.
            let t: [__m256; 8] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_ps(a, b)
                } else {
                    _mm256_unpackhi_ps(a, b)
                }
            });
            // u[4h + q]: element q (lane 0) and q + 4 (lane 1) of rows 4h..4h + 4.
            let u: [__m256; 8] = std::array::from_fn(|i| {
                let (base, q) = (i / 4 * 4, i % 4);
                let (a, b) = (t[base + q / 2], t[base + q / 2 + 2]);
                if q % 2 == 0 {
                    _mm256_shuffle_ps::<0x44>(a, b)
                } else {
                    _mm256_shuffle_ps::<0xEE>(a, b)
                }
            });
            for (p, row) in rows.iter_mut().enumerate() {
                let (a, b) = (u[p % 4], u[4 + p % 4]);
                *row = if p < 4 {
                    _mm256_permute2f128_ps::<0x20>(a, b)
                } else {
                    _mm256_permute2f128_ps::<0x31>(a, b)
                };
            }
        }
    }
}

impl F32Lanes for __m512 {
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { std::arch::x86_64::_mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(from: *const f32) -> Self {
        unsafe { std::arch::x86_64::_mm512_set1_ps(*from) }
    }
    #[inline(always)]
    unsafe fn load(from: *const f32) -> Self {
        unsafe { std::arch::x86_64::_mm512_loadu_ps(from) }
    }
    #[inline(always)]
    unsafe fn store(self, to: *mut f32) {
        unsafe { std::arch::x86_64::_mm512_storeu_ps(to, self) }
    }
    #[inline(always)]
    unsafe fn store_first(self, to: *mut f32, count: usize) {
        unsafe { std::arch::x86_64::_mm512_mask_storeu_ps(to, (1u16 << count) - 1, self) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        unsafe { std::arch::x86_64::_mm512_fmadd_ps(self, b, c) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        unsafe { std::arch::x86_64::_mm512_add_ps(self, b) }
    }
    /// Intel's four-stage unpack / shuffle sequence.
    #[inline(always)]
    unsafe fn transpose(rows: &mut [Self]) {
        use std::arch::x86_64::{_mm512_shuffle_f32x4, _mm512_shuffle_ps};
        use std::arch::x86_64::{_mm512_unpackhi_ps, _mm512_unpacklo_ps};
        unsafe {
            let r: [__m512; 16] = std::array::from_fn(|i| rows[i]);
            // Stage 1: interleave pairs of rows within each 128-bit lane.
            let t: [__m512; 16] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            // Stage 2: u[4g + q] holds, in lane L, element 4L + q of rows 4g..4g + 4.
            let u: [__m512; 16] = std::array::from_fn(|i| {
                let (group, q) = (i / 4 * 4, i % 4);
                let (a, b) = (t[group + q / 2], t[group + q / 2 + 2]);
                if q % 2 == 0 {
                    _mm512_shuffle_ps::<0x44>(a, b)
                } else {
                    _mm512_shuffle_ps::<0xEE>(a, b)
                }
            });
            // Stage 3: pair the lanes of rows 0..8 and of 8..16.
            let w: [__m512; 16] = std::array::from_fn(|i| {
                let (q, base) = (i % 4, i / 8 * 8);
                let (a, b) = (u[base + q], u[base + 4 + q]);
                if (i / 4) % 2 == 0 {
                    _mm512_shuffle_f32x4::<0x88>(a, b)
                } else {
                    _mm512_shuffle_f32x4::<0xDD>(a, b)
                }
            });
            // Stage 4: row p = element p of all 16 rows.
            for (p, row) in rows.iter_mut().enumerate() {
                let q = p % 4;
                let (a, b) = if (p / 4) % 2 == 0 {
                    (w[q], w[8 + q])
                } else {
                    (w[4 + q], w[12 + q])
                };
                *row = if p < 8 {
                    _mm512_shuffle_f32x4::<0x88>(a, b)
                } else {
                    _mm512_shuffle_f32x4::<0xDD>(a, b)
                };
            }
        }
    }
}

/// Adds (or writes, for the first depth block) the `MR × (W · LANES)` tile A sliver · B sliver
/// into `out`: `a` holds `depth` packed columns of MR, `b` `depth` packed rows of W registers.
///
/// # Safety
/// The CPU has the instruction set of `V`'s methods and the caller is compiled with it.
#[inline(always)]
unsafe fn add_tile<V: F32Lanes, const MR: usize, const W: usize>(
    depth: usize,
    a: &[f32],
    b: &[f32],
    out: TileOut<f32>,
) {
    let nr = W * V::LANES;
    assert!(a.len() >= depth * MR && b.len() >= depth * nr);
    assert!(out.out.len() >= (MR - 1) * out.row_stride + nr);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    // SAFETY: step p reads a[p·MR .. p·MR + MR] and b[p·nr .. p·nr + nr], p < depth, inside the
    // slices (asserted above); the instruction set is the caller's promise.
    unsafe {
        let mut acc = [[V::zero(); W]; MR];
        for p in 0..depth {
            let b_row: [V; W] = std::array::from_fn(|w| V::load(b.add(p * nr + w * V::LANES)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let a_i = V::splat(a.add(p * MR + i));
                for (acc, &b) in acc.iter_mut().zip(&b_row) {
                    *acc = a_i.mul_add(b, *acc);
                }
            }
        }
        // Row i of the tile is nr elements from i × row_stride, inside `out` (asserted above);
        // after the first block they were written.
        let row_start = out.out.as_mut_ptr().cast::<f32>();
        for (i, acc) in acc.iter().enumerate() {
            for (w, &acc) in acc.iter().enumerate() {
                let at = row_start.add(i * out.row_stride + w * V::LANES);
                let before = if out.first_block {
                    V::zero()
                } else {
                    V::load(at)
                };
                before.add(acc).store(at);
            }
        }
    }
}

/// The 6 × 16 f32 tile with AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_6x16_avx2(depth: usize, a: &[f32], b: &[f32], out: TileOut<f32>) {
    // SAFETY: this function is compiled with AVX2 + FMA, which the caller promises.
    unsafe { add_tile::<__m256, 6, 2>(depth, a, b, out) }
}

/// The 12 × 32 f32 tile with AVX-512.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile_12x32_avx512(depth: usize, a: &[f32], b: &[f32], out: TileOut<f32>) {
    // SAFETY: this function is compiled with AVX-512F, which the caller promises.
    unsafe { add_tile::<__m512, 12, 2>(depth, a, b, out) }
}

/// An interleaving packer: (data, the first run's start, the stride between runs, depth, the
/// block of depth rows of W it fills).
pub(super) type InterleavingPacker =
    unsafe fn(&[f32], usize, usize, usize, &mut [MaybeUninit<f32>]);

/// Packs `W` runs — run j's `depth` elements contiguous from `first_run + j × run_stride` —
/// into `block`, depth rows of W (`block[p·W + j]` = run j's element p): LANES runs at a time,
/// square by square through [`F32Lanes::transpose`] (a part of fewer than LANES runs stores the
/// first lanes of each transposed row), the depth past the last whole square element by
/// element. For B's slivers W = NR (runs: the columns of a transposed B); for A's, W = MR
/// (runs: the rows of a row-major A).
///
/// # Safety
/// As [`add_tile`].
#[inline(always)]
unsafe fn pack_interleaved<V: F32Lanes, const W: usize>(
    data: &[f32],
    first_run: usize,
    run_stride: usize,
    depth: usize,
    block: &mut [MaybeUninit<f32>],
) {
    let lanes = V::LANES;
    assert!(block.len() >= depth * W);
    assert!(first_run + (W - 1) * run_stride + depth <= data.len());
    let squares = depth / lanes;
    // SAFETY: run (part + i), i < count, has `depth` elements from its start and p0 + lanes <=
    // depth; (p0 + p) · W + part + count <= depth · W <= block.len() (both asserted above).
    unsafe {
        // Rows past a part's count hold zeros or an earlier square's values; they land only in
        // lanes that are not stored.
        let mut square = [V::zero(); 16];
        let square = &mut square[..lanes];
        for part in (0..W).step_by(lanes) {
            let count = lanes.min(W - part);
            for p0 in (0..squares * lanes).step_by(lanes) {
                for (i, row) in square.iter_mut().enumerate().take(count) {
                    let run = first_run + (part + i) * run_stride;
                    *row = V::load(data.as_ptr().add(run + p0));
                }
                V::transpose(square);
                for (p, row) in square.iter().enumerate() {
                    let at = block.as_mut_ptr().add((p0 + p) * W + part).cast();
                    if count == lanes {
                        row.store(at);
                    } else {
                        row.store_first(at, count);
                    }
                }
            }
        }
    }
    for p in squares * lanes..depth {
        for (j, packed) in block[p * W..p * W + W].iter_mut().enumerate() {
            packed.write(data[first_run + j * run_stride + p]);
        }
    }
}

/// [`pack_interleaved`] compiled for AVX2 (8 lanes), for `W` runs.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pack_interleaved_avx2<const W: usize>(
    data: &[f32],
    first_run: usize,
    run_stride: usize,
    depth: usize,
    block: &mut [MaybeUninit<f32>],
) {
    // SAFETY: this function is compiled with AVX2, which the caller promises.
    unsafe { pack_interleaved::<__m256, W>(data, first_run, run_stride, depth, block) }
}

/// [`pack_interleaved`] compiled for AVX-512 (16 lanes), for `W` runs.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pack_interleaved_avx512<const W: usize>(
    data: &[f32],
    first_run: usize,
    run_stride: usize,
    depth: usize,
    block: &mut [MaybeUninit<f32>],
) {
    // SAFETY: this function is compiled with AVX-512F, which the caller promises.
    unsafe { pack_interleaved::<__m512, W>(data, first_run, run_stride, depth, block) }
}

#[cfg(test)]
mod tests {
    use super::super::{micro_kernel_body, TileOut};
    use rand::Rng;
    use std::mem::MaybeUninit;

    /// A kernel against the generic body it replaces, bit for bit: over several depths, into
    /// a strided output, writing (first depth block) and adding to what is there.
    fn same_bits_as_generic<const MR: usize, const NR: usize>(
        kernel: unsafe fn(usize, &[f32], &[f32], TileOut<f32>),
    ) {
        let mut rng = crate::seeded_rng(7);
        for depth in [1, 5, 64, 257] {
            let a: Vec<f32> = (0..depth * MR)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let b: Vec<f32> = (0..depth * NR)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let tile = micro_kernel_body::<f32, MR, NR, true>(depth, &a, &b);
            let row_stride = NR + 3;
            let before: Vec<f32> = (0..MR * row_stride).map(|_| rng.random()).collect();
            for first_block in [true, false] {
                let mut out: Vec<MaybeUninit<f32>> =
                    before.iter().map(|&v| MaybeUninit::new(v)).collect();
                let target = TileOut {
                    out: &mut out,
                    row_stride,
                    first_block,
                };
                // SAFETY: the caller checked the CPU has the kernel's instruction set.
                unsafe { kernel(depth, &a, &b, target) };
                for (i, row) in tile.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        let at = i * row_stride + j;
                        let old = if first_block { 0.0 } else { before[at] };
                        // SAFETY: every element of `out` was initialised above.
                        let got = unsafe { out[at].assume_init() };
                        assert_eq!(
                            got.to_bits(),
                            (old + v).to_bits(),
                            "depth {depth} ({i}, {j})"
                        );
                    }
                }
                // The padding columns past the tile are left alone.
                for (i, row) in out.chunks(row_stride).enumerate() {
                    for (j, v) in row.iter().enumerate().skip(NR) {
                        // SAFETY: as above.
                        assert_eq!(unsafe { v.assume_init() }, before[i * row_stride + j]);
                    }
                }
            }
        }
    }

    /// A packer against its definition, `block[p·W + j]` = run j's element p, for depths on
    /// and off its square grid and runs further apart than their length.
    fn packs_runs_interleaved<const W: usize>(packer: super::InterleavingPacker) {
        let mut rng = crate::seeded_rng(11);
        for depth in [1, 7, 16, 37, 64] {
            let (first_run, run_stride) = (3, depth + 5);
            let data: Vec<f32> = (0..first_run + W * run_stride)
                .map(|_| rng.random())
                .collect();
            let mut block = vec![MaybeUninit::new(f32::NAN); depth * W + 4];
            // SAFETY: the caller checked the CPU has the packer's instruction set.
            unsafe { packer(&data, first_run, run_stride, depth, &mut block) };
            for p in 0..depth {
                for j in 0..W {
                    // SAFETY: every element was initialised above.
                    let got = unsafe { block[p * W + j].assume_init() };
                    let expect = data[first_run + j * run_stride + p];
                    assert_eq!(
                        got.to_bits(),
                        expect.to_bits(),
                        "W {W} depth {depth} ({p}, {j})"
                    );
                }
            }
            // Nothing past the block is written.
            for v in &block[depth * W..] {
                // SAFETY: as above.
                assert!(unsafe { v.assume_init() }.is_nan());
            }
        }
    }

    #[test]
    fn avx2_packs_match_their_definition() {
        if is_x86_feature_detected!("avx2") {
            packs_runs_interleaved::<16>(super::pack_interleaved_avx2::<16>);
            packs_runs_interleaved::<6>(super::pack_interleaved_avx2::<6>);
        }
    }

    #[test]
    fn avx512_packs_match_their_definition() {
        if is_x86_feature_detected!("avx512f") {
            packs_runs_interleaved::<32>(super::pack_interleaved_avx512::<32>);
            packs_runs_interleaved::<12>(super::pack_interleaved_avx512::<12>);
        }
    }

    #[test]
    fn avx2_tile_matches_the_generic_body() {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            same_bits_as_generic::<6, 16>(super::tile_6x16_avx2);
        }
    }

    #[test]
    fn avx512_tile_matches_the_generic_body() {
        if is_x86_feature_detected!("avx512f") {
            same_bits_as_generic::<12, 32>(super::tile_12x32_avx512);
        }
    }
}
