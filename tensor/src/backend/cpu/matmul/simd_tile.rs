//! The f32 register-tile micro-kernel written with x86 intrinsics, once for any vector width:
//! AVX2 + FMA (6 × 16: 12 of the 16 ymm registers as accumulators) and AVX-512 (12 × 32: 24 of
//! the 32 zmm registers). The generic body in `matmul.rs` computes the same tile, but keeps it
//! in memory between calls, checks bounds on every load and (for the wide tile) spills its
//! accumulators; this one keeps the tile in registers and adds it straight into the output.
//!
//! Per depth step: `W` loads of a packed B row, `MR` broadcasts of a packed A column and
//! `MR × W` fused multiply-adds — the generic body's arithmetic in its order, so the same bits.

use super::TileOut;
use std::arch::x86_64::{__m256, __m512};

/// One SIMD register of f32 lanes: what the tile kernel needs of it. Each method is inlined
/// into a caller compiled with the instruction set it uses (see [`tile_6x16_avx2`],
/// [`tile_12x32_avx512`]); called anywhere else it is undefined behaviour.
trait F32Lanes: Copy {
    /// f32 lanes per register.
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(from: *const f32) -> Self;
    unsafe fn load(from: *const f32) -> Self;
    unsafe fn store(self, to: *mut f32);
    /// self · b + c, rounded once.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
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
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        unsafe { std::arch::x86_64::_mm256_fmadd_ps(self, b, c) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        unsafe { std::arch::x86_64::_mm256_add_ps(self, b) }
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
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        unsafe { std::arch::x86_64::_mm512_fmadd_ps(self, b, c) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        unsafe { std::arch::x86_64::_mm512_add_ps(self, b) }
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
