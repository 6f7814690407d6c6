//! The precision policy of matrix products: a per-thread setting that a caller sets for a
//! scope and that is restored afterwards, the way autograd's `no_grad` works.
//!
//! ```
//! use ditmoe_cuda::precision;
//! let exact = precision::current().with_tensor_cores(false);
//! precision::with(exact, || {
//!     // every f32 product launched here runs the f32 SIMT GEMM, as the CPU computes it
//!     assert!(!precision::current().tensor_core_matmul);
//! });
//! assert!(precision::current().tensor_core_matmul, "restored");
//! ```
//!
//! A thread starts from [`Precision::from_env`]: tensor cores on, the GEMM tile that
//! `DITMOE_GEMM_TILE` asks for (`registry::device` reports a bad value as an error).

use std::cell::Cell;

use crate::error::{CudaError, Result};
use crate::kernels::gemm::GemmTile;

/// `square` or `wide`: the CTA tile of the tensor-core GEMMs when no caller chooses one.
pub const GEMM_TILE_ENV: &str = "DITMOE_GEMM_TILE";

/// How the kernels of this thread multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// Mixed precision for f32 matrix products: when on, a product whose shape the
    /// tensor-core GEMM takes rounds its operands to bf16 and accumulates in f32 (as AMP
    /// does); when off, every product runs the f32 SIMT GEMM, exactly as the CPU would.
    pub tensor_core_matmul: bool,
    /// The CTA tile of the tensor-core GEMMs (plain, grouped and weight-gradient): 128×128 by
    /// default; 128×256 (`GemmTile::Wide`) is benchmarked alongside until a GPU measurement
    /// says which to use where.
    pub gemm_tile: GemmTile,
}

/// Tensor cores on, the 128×128 tile.
impl Default for Precision {
    fn default() -> Self {
        Precision {
            tensor_core_matmul: true,
            gemm_tile: GemmTile::Square,
        }
    }
}

impl Precision {
    /// This precision with the tensor cores on or off for f32 products.
    pub fn with_tensor_cores(self, on: bool) -> Precision {
        Precision {
            tensor_core_matmul: on,
            ..self
        }
    }

    /// This precision with the tensor-core GEMMs on `tile`.
    pub fn with_gemm_tile(self, tile: GemmTile) -> Precision {
        Precision {
            gemm_tile: tile,
            ..self
        }
    }

    /// Tensor cores on, the GEMM tile `DITMOE_GEMM_TILE` asks for (128×128 when unset).
    pub fn from_env() -> Result<Precision> {
        let gemm_tile = match std::env::var(GEMM_TILE_ENV).as_deref() {
            Err(_) | Ok("") | Ok("square") => GemmTile::Square,
            Ok("wide") => GemmTile::Wide,
            Ok(other) => {
                return Err(CudaError::InvalidArgument(format!(
                    "{GEMM_TILE_ENV}: expected `square` or `wide`, found `{other}`"
                )))
            }
        };
        Ok(Precision {
            gemm_tile,
            ..Precision::default()
        })
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = Cell::new(Precision::from_env().unwrap_or_default());
}

/// The precision kernels launched from this thread use now.
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// Uses `precision` on this thread until the guard drops, then restores the previous one.
#[must_use = "the precision is restored when the guard drops"]
pub fn set(precision: Precision) -> PrecisionGuard {
    PrecisionGuard {
        previous: CURRENT.with(|c| c.replace(precision)),
    }
}

/// Runs `f` with `precision` on this thread.
pub fn with<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    let _guard = set(precision);
    f()
}

/// Restores the precision that was current before [`set`] when dropped.
pub struct PrecisionGuard {
    previous: Precision,
}

impl Drop for PrecisionGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_lasts_for_its_scope_and_nests() {
        let start = current();
        let exact = start.with_tensor_cores(false);
        {
            let _exact = set(exact);
            assert_eq!(current(), exact);
            let wide = exact.with_gemm_tile(GemmTile::Wide);
            with(wide, || assert_eq!(current(), wide));
            assert_eq!(current(), exact, "the inner scope restored the outer one");
        }
        assert_eq!(current(), start);
    }

    #[test]
    fn a_setting_is_per_thread() {
        let _exact = set(current().with_tensor_cores(false));
        let other = std::thread::spawn(|| current().tensor_core_matmul)
            .join()
            .unwrap();
        assert!(other, "another thread starts from the default");
    }
}
