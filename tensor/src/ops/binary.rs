//! Elementwise functions of two tensors, with NumPy broadcasting.

use crate::dtype::FloatElement;
use crate::error::Result;
use crate::layout::{broadcast_shapes, Layout};
use crate::parallel::{for_each_chunk_mut, rows_per_chunk};
use crate::{with_float_type, Tensor};

/// An elementwise function `y = f(a, b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    /// 1 where a > b, else 0 (not differentiable).
    Gt,
    /// 1 where a < b, else 0 (not differentiable).
    Lt,
    /// 1 where a == b, else 0 (not differentiable).
    Eq,
}

fn indicator<T: FloatElement>(condition: bool) -> T {
    if condition {
        T::one()
    } else {
        T::zero()
    }
}

impl BinaryOp {
    pub fn apply<T: FloatElement>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Maximum => a.max(b),
            BinaryOp::Minimum => a.min(b),
            BinaryOp::Gt => indicator(a > b),
            BinaryOp::Lt => indicator(a < b),
            BinaryOp::Eq => indicator(a == b),
        }
    }

    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Gt => "gt",
            BinaryOp::Lt => "lt",
            BinaryOp::Eq => "eq",
        }
    }
}

/// `f(a, b)` over the broadcast shape. Inputs that already have the output shape and are
/// contiguous are read in place; others are first expanded into contiguous copies.
fn zip_map<T: FloatElement>(
    a: &Tensor,
    b: &Tensor,
    shape: &[usize],
    f: impl Fn(T, T) -> T + Sync + Send,
) -> Result<Tensor> {
    let a = a.broadcast_to(shape)?;
    let b = b.broadcast_to(shape)?;
    let (a, b) = (a.values::<T>()?, b.values::<T>()?);
    let mut out = vec![T::zero(); a.len()];
    let chunk = rows_per_chunk(out.len(), 1);
    for_each_chunk_mut(&mut out, chunk, a.len(), |i, out| {
        let start = i * chunk;
        for ((o, &x), &y) in out.iter_mut().zip(&a[start..]).zip(&b[start..]) {
            *o = f(x, y);
        }
    });
    Ok(Tensor::from_storage(
        T::into_storage(out),
        Layout::contiguous(shape),
    ))
}

impl Tensor {
    /// y = op(self, other) with broadcasting; both must have the same float dtype.
    pub fn binary(&self, op: BinaryOp, other: &Tensor) -> Result<Tensor> {
        let name = op.name();
        self.ensure_cpu(name)?;
        other.ensure_cpu(name)?;
        other.check_dtype(name, self.dtype())?;
        let shape = broadcast_shapes(name, self.shape(), other.shape())?;
        with_float_type!(self.dtype(), name, T => zip_map::<T>(self, other, &shape, |a, b| op.apply(a, b)))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided, ravel, unravel};
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
    fn broadcast_binary_ops_match_reference() {
        let ops = [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Maximum,
            BinaryOp::Minimum,
            BinaryOp::Gt,
            BinaryOp::Lt,
            BinaryOp::Eq,
        ];
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
    fn mismatches_are_reported() {
        let a = Tensor::zeros(&[2, 3], DType::F32).unwrap();
        let b = Tensor::zeros(&[4, 3], DType::F32).unwrap();
        assert!(matches!(a.add(&b), Err(TensorError::Shape { .. })));
        let c = Tensor::zeros(&[2, 3], DType::F64).unwrap();
        let err = a.add(&c).unwrap_err().to_string();
        assert!(err.contains("expected F32, found F64"), "{err}");
    }
}
