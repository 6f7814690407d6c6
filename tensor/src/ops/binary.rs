//! Elementwise functions of two tensors, with NumPy broadcasting.

pub use crate::descriptors::BinaryOp;

use crate::error::Result;
use crate::layout::broadcast_shapes;
use crate::Tensor;

impl Tensor {
    /// y = op(self, other) with broadcasting; both must have the same float dtype. A CPU
    /// scalar may meet a device tensor (it is copied there).
    pub fn binary(&self, op: BinaryOp, other: &Tensor) -> Result<Tensor> {
        let name = op.name();
        other.check_dtype(name, self.dtype())?;
        let shape = broadcast_shapes(name, self.shape(), other.shape())?;
        let operands = Tensor::scalars_to_common_device(&[self, other])?;
        let (a, b) = (
            operands[0].broadcast_to(&shape)?,
            operands[1].broadcast_to(&shape)?,
        );
        Tensor::compute(name, &[&a, &b], &shape, |backend, x| {
            backend.binary(&x[0], &x[1], op)
        })
    }

    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, other)
    }
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, other)
    }
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, other)
    }
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, other)
    }
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Maximum, other)
    }
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Minimum, other)
    }
    pub fn gt(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Gt, other)
    }
    pub fn lt(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Lt, other)
    }
    pub fn eq_elementwise(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Eq, other)
    }
    /// self − value.
    pub fn sub_scalar(&self, value: f64) -> Result<Tensor> {
        self.add_scalar(-value)
    }
    /// self / value.
    pub fn div_scalar(&self, value: f64) -> Result<Tensor> {
        self.mul_scalar(1.0 / value)
    }
    /// max(self, value) elementwise.
    pub fn maximum_scalar(&self, value: f64) -> Result<Tensor> {
        self.maximum(&Tensor::full(&[], value, self.dtype())?)
    }
    /// min(self, value) elementwise.
    pub fn minimum_scalar(&self, value: f64) -> Result<Tensor> {
        self.minimum(&Tensor::full(&[], value, self.dtype())?)
    }

    /// `self + weight · (end − self)` for `end` of the same shape, in one pass: an exponential
    /// moving average's update (`average.lerp(current, 1 − decay)`).
    pub fn lerp(&self, end: &Tensor, weight: f64) -> Result<Tensor> {
        end.check_shape("lerp", self.shape())?;
        end.check_dtype("lerp", self.dtype())?;
        Tensor::compute("lerp", &[self, end], self.shape(), |backend, x| {
            backend.lerp(&x[0], &x[1], weight)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided, ravel, unravel};
    use crate::BinaryMath;
    use crate::{DType, TensorError};

    /// Naive broadcast reference: index each input by clamping broadcast dimensions to 0.
    fn reference(op: BinaryOp, a: &Tensor, b: &Tensor) -> Vec<f64> {
        let shape = broadcast_shapes("ref", a.shape(), b.shape()).unwrap();
        let (av, bv) = (a.to_vec_f64(), b.to_vec_f64());
        let source = |t: &Tensor, index: &[usize]| {
            let lead = index.len() - t.rank();
            let own: Vec<usize> = t
                .shape()
                .iter()
                .enumerate()
                .map(|(d, &s)| if s == 1 { 0 } else { index[lead + d] })
                .collect();
            ravel(&own, t.shape())
        };
        (0..shape.iter().product())
            .map(|i| {
                let index = unravel(i, &shape);
                op.apply(av[source(a, &index)], bv[source(b, &index)])
            })
            .collect()
    }

    #[test]
    fn lerp_moves_a_fraction_of_the_way() {
        let (a, b) = (
            random_strided(&[3, 4], -2.0, 2.0, 1),
            random_strided(&[3, 4], -2.0, 2.0, 2),
        );
        let got = a.lerp(&b, 0.25).unwrap().to_vec_f64();
        let expected: Vec<f64> = a
            .to_vec_f64()
            .iter()
            .zip(b.to_vec_f64())
            .map(|(x, y)| 0.75 * x + 0.25 * y)
            .collect();
        assert_close(&got, &expected, 1e-12, "lerp");
        assert!(a.lerp(&b.narrow(0, 0, 2).unwrap(), 0.5).is_err());
    }

    #[test]
    fn broadcast_binary_ops_match_reference() {
        let ops = BinaryOp::EVERY;
        let cases: [(&[usize], &[usize]); 4] = [
            (&[3, 4], &[3, 4]),
            (&[2, 1, 4], &[3, 1]),
            (&[5], &[2, 3, 5]),
            (&[], &[2, 2]),
        ];
        for op in ops {
            for (i, (sa, sb)) in cases.iter().enumerate() {
                let a = random_strided(sa, 0.5, 2.0, i as u64);
                let b = random_strided(sb, 0.5, 2.0, 100 + i as u64);
                let y = a.binary(op, &b).unwrap();
                assert_close(
                    &y.to_vec_f64(),
                    &reference(op, &a, &b),
                    1e-12,
                    &format!("{op:?} {sa:?} {sb:?}"),
                );
            }
        }
    }

    #[test]
    fn large_inputs_take_the_parallel_path() {
        let a = random_strided(&[300, 200], -1.0, 1.0, 1);
        let b = random_strided(&[200], -1.0, 1.0, 2);
        let y = a.mul(&b).unwrap();
        assert_close(
            &y.to_vec_f64(),
            &reference(BinaryOp::Mul, &a, &b),
            1e-12,
            "mul",
        );
    }

    #[test]
    fn empty_and_scalar_operands() {
        let empty = Tensor::zeros(&[0, 3], DType::F32).unwrap();
        assert_eq!(
            empty
                .add(&Tensor::ones(&[3], DType::F32).unwrap())
                .unwrap()
                .shape(),
            &[0, 3]
        );
        let s = Tensor::scalar(2.0f64).mul(&Tensor::scalar(3.0f64)).unwrap();
        assert_eq!((s.rank(), s.item().unwrap()), (0, 6.0));
    }

    #[test]
    fn mismatches_are_reported() {
        let a = Tensor::zeros(&[2, 3], DType::F32).unwrap();
        let b = Tensor::zeros(&[4, 3], DType::F32).unwrap();
        assert!(matches!(a.add(&b), Err(TensorError::Shape { .. })));
        let c = Tensor::zeros(&[2, 3], DType::F64).unwrap();
        let err = a.add(&c).unwrap_err().to_string();
        assert!(err.contains("expected F32, found F64"), "{err}");
    }
}
