//! Matrix multiplication: batched, broadcasting over batch dimensions, any operand strides
//! (the CPU kernel, Goto/BLIS blocking, is `backend/cpu/matmul.rs`).

use crate::error::{Result, TensorError};
use crate::layout::broadcast_shapes;
use crate::Tensor;

impl Tensor {
    /// Matrix product of the last two dimensions, `[.., m, k] · [.., k, n] → [.., m, n]`, with the
    /// batch dimensions broadcast (NumPy rules). Operands may have any strides.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        rhs.check_dtype("matmul", self.dtype())?;
        if self.rank() < 2 {
            return Err(TensorError::shape(
                "matmul",
                "lhs of rank >= 2 ([.., m, k])",
                self.shape(),
            ));
        }
        if rhs.rank() < 2 {
            return Err(TensorError::shape(
                "matmul",
                "rhs of rank >= 2 ([.., k, n])",
                rhs.shape(),
            ));
        }
        let (m, k) = (self.shape()[self.rank() - 2], self.shape()[self.rank() - 1]);
        let (k2, n) = (rhs.shape()[rhs.rank() - 2], rhs.shape()[rhs.rank() - 1]);
        if k != k2 {
            return Err(TensorError::shape(
                "matmul",
                format!("rhs [.., {k}, n] to match lhs {:?}", self.shape()),
                rhs.shape(),
            ));
        }
        let batch = broadcast_shapes(
            "matmul",
            &self.shape()[..self.rank() - 2],
            &rhs.shape()[..rhs.rank() - 2],
        )?;
        let mut shape = batch.clone();
        shape.extend([m, n]);
        Tensor::compute("matmul", &[self, rhs], &shape, |backend, x| {
            backend.matmul(&x[0], &x[1], &batch)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided};

    /// Naive triple loop over logical indices.
    fn reference(a: &Tensor, b: &Tensor) -> Vec<f64> {
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        let (av, bv) = (a.to_vec_f64(), b.to_vec_f64());
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| av[i * k + p] * bv[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn matches_reference_for_awkward_sizes_and_transposed_operands() {
        for (i, &(m, k, n)) in [
            (1, 1, 1),
            (3, 5, 7),
            (17, 300, 9),
            (70, 33, 1100),
            (130, 260, 20),
        ]
        .iter()
        .enumerate()
        {
            let a = random_strided(&[m, k], -1.0, 1.0, i as u64);
            let b = random_strided(&[n, k], -1.0, 1.0, 50 + i as u64)
                .t()
                .unwrap();
            let c = a.matmul(&b).unwrap();
            assert_eq!(c.shape(), &[m, n]);
            assert_close(
                &c.to_vec_f64(),
                &reference(&a, &b),
                1e-10,
                &format!("{m}x{k}x{n}"),
            );
        }
    }

    #[test]
    fn batch_dimensions_broadcast() {
        let a = random_strided(&[2, 1, 4, 6], -1.0, 1.0, 1);
        let b = random_strided(&[3, 6, 5], -1.0, 1.0, 2);
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.shape(), &[2, 3, 4, 5]);
        for i in 0..2 {
            for j in 0..3 {
                let ai = a.narrow(0, i, 1).unwrap().reshape(&[4, 6]).unwrap();
                let bj = b.narrow(0, j, 1).unwrap().reshape(&[6, 5]).unwrap();
                let cij = c.narrow(0, i, 1).unwrap().narrow(1, j, 1).unwrap();
                assert_close(&cij.to_vec_f64(), &reference(&ai, &bj), 1e-12, "batch");
            }
        }
    }

    #[test]
    fn many_products_run_one_per_task() {
        let a = random_strided(&[6, 40, 50], -1.0, 1.0, 4);
        let b = random_strided(&[6, 50, 30], -1.0, 1.0, 5);
        let c = a.matmul(&b).unwrap();
        for i in 0..6 {
            let ai = a.narrow(0, i, 1).unwrap().reshape(&[40, 50]).unwrap();
            let bi = b.narrow(0, i, 1).unwrap().reshape(&[50, 30]).unwrap();
            assert_close(
                &c.narrow(0, i, 1).unwrap().to_vec_f64(),
                &reference(&ai, &bi),
                1e-12,
                "batch task",
            );
        }
    }

    #[test]
    fn f32_large_product_is_accurate() {
        let a = random_strided(&[96, 512], -1.0, 1.0, 8);
        let b = random_strided(&[512, 80], -1.0, 1.0, 9);
        let c = a
            .to_dtype(crate::DType::F32)
            .unwrap()
            .matmul(&b.to_dtype(crate::DType::F32).unwrap())
            .unwrap();
        assert_close(&c.to_vec_f64(), &reference(&a, &b), 1e-4, "f32");
    }

    #[test]
    fn f32_transposed_operands_match_reference() {
        // A weight used as `w.t()` and a row-major A: the interleaving pack of B's columns
        // and of A's rows (AVX2 or AVX-512), with depths off its 8- or 16-square grid, widths
        // off B's 16- or 32-column sliver and row counts off A's 6- or 12-row sliver.
        for (i, &(m, k, n)) in [(13, 16, 33), (25, 300, 64), (70, 37, 100), (5, 520, 32)]
            .iter()
            .enumerate()
        {
            let a = random_strided(&[m, k], -1.0, 1.0, 20 + i as u64);
            let w = random_strided(&[n, k], -1.0, 1.0, 30 + i as u64);
            let f32_of = |t: &Tensor| t.to_dtype(crate::DType::F32).unwrap().contiguous();
            let c = f32_of(&a).matmul(&f32_of(&w).t().unwrap()).unwrap();
            let expect = reference(&a, &w.t().unwrap());
            assert_close(&c.to_vec_f64(), &expect, 1e-4, &format!("{m}x{k}x{n}"));
        }
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let a = Tensor::zeros(&[2, 3], crate::DType::F32).unwrap();
        let b = Tensor::zeros(&[4, 5], crate::DType::F32).unwrap();
        let err = a.matmul(&b).unwrap_err().to_string();
        assert!(err.contains("[2, 3]") && err.contains("[4, 5]"), "{err}");
        assert!(a
            .matmul(&Tensor::zeros(&[3], crate::DType::F32).unwrap())
            .is_err());
    }
}
