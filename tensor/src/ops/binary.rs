//! Elementwise functions of two tensors, with NumPy broadcasting.

use crate::dtype::FloatElement;
use crate::error::Result;
use crate::layout::{broadcast_shapes, coalesce, Layout};
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

/// Storage offsets where each innermost row of `t` (viewed with `shape` and `strides`) starts.
fn row_starts(shape: &[usize], strides: &[usize], offset: usize) -> Vec<usize> {
    let outer = shape.len().saturating_sub(1);
    Layout::new(shape[..outer].to_vec(), strides[..outer].to_vec(), offset)
        .offsets()
        .collect()
}

/// `f(a, b)` over the broadcast shape, reading both inputs in place through their strides.
/// After merging back-to-back dimensions the work is a list of rows; along a row each input
/// either advances (stride 1), stays (a broadcast, stride 0) or jumps (any other stride).
pub(crate) fn zip_map<T: FloatElement>(
    a: &Tensor,
    b: &Tensor,
    shape: &[usize],
    f: impl Fn(T, T) -> T + Sync + Send,
) -> Result<Tensor> {
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Tensor::zeros(shape, T::DTYPE);
    }
    let (a, b) = (a.broadcast_to(shape)?, b.broadcast_to(shape)?);
    let (a_data, b_data) = (
        T::slice(a.storage()).expect("dtype checked"),
        T::slice(b.storage()).expect("dtype checked"),
    );
    let (merged, strides) = coalesce(shape, &[a.layout().strides(), b.layout().strides()]);
    let (merged, strides) = if merged.is_empty() {
        (vec![1], vec![vec![1], vec![1]])
    } else {
        (merged, strides)
    };
    let inner = *merged.last().unwrap();
    let (sa, sb) = (*strides[0].last().unwrap(), *strides[1].last().unwrap());
    let a_rows = row_starts(&merged, &strides[0], a.layout().offset());
    let b_rows = row_starts(&merged, &strides[1], b.layout().offset());
    let mut out = vec![T::zero(); numel];
    let chunk = rows_per_chunk(numel, inner);
    for_each_chunk_mut(&mut out, chunk, numel, |c, out| {
        for (r, out_row) in out.chunks_mut(inner).enumerate() {
            let row = c * (chunk / inner) + r;
            let (ra, rb) = (a_rows[row], b_rows[row]);
            match (sa, sb) {
                (1, 1) => {
                    for ((o, &x), &y) in out_row
                        .iter_mut()
                        .zip(&a_data[ra..ra + inner])
                        .zip(&b_data[rb..rb + inner])
                    {
                        *o = f(x, y);
                    }
                }
                (1, 0) => {
                    let y = b_data[rb];
                    for (o, &x) in out_row.iter_mut().zip(&a_data[ra..ra + inner]) {
                        *o = f(x, y);
                    }
                }
                (0, 1) => {
                    let x = a_data[ra];
                    for (o, &y) in out_row.iter_mut().zip(&b_data[rb..rb + inner]) {
                        *o = f(x, y);
                    }
                }
                _ => {
                    for (i, o) in out_row.iter_mut().enumerate() {
                        *o = f(a_data[ra + i * sa], b_data[rb + i * sb]);
                    }
                }
            }
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
        if self.is_cuda() || other.is_cuda() {
            return crate::ops::cuda::binary(self, other, op);
        }
        other.check_dtype(name, self.dtype())?;
        let shape = broadcast_shapes(name, self.shape(), other.shape())?;
        // One monomorphised loop per op: with the op a constant, the loop body inlines and
        // vectorises instead of matching on the op for every element.
        macro_rules! per_op {
            ($T:ty: $($variant:ident),*) => {
                match op {
                    $(BinaryOp::$variant => zip_map::<$T>(self, other, &shape, |a, b| BinaryOp::$variant.apply(a, b)),)*
                }
            };
        }
        with_float_type!(self.dtype(), name, T => per_op!(T: Add, Sub, Mul, Div, Maximum, Minimum, Gt, Lt, Eq))
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
        if self.is_cuda() || end.is_cuda() {
            return crate::ops::cuda::lerp(self, end, weight);
        }
        end.check_dtype("lerp", self.dtype())?;
        with_float_type!(self.dtype(), "lerp", T => {
            let w = T::from_f64(weight);
            zip_map::<T>(self, end, self.shape(), |a, b| a + w * (b - a))
        })
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
