//! Elementwise kernels on the CPU: unary functions and their derivatives, broadcasting binary
//! ops, `lerp`, `where_cond` and SwiGLU's fused gated product, with the scalar meaning of each
//! op family.

use crate::backend::Operand;
use crate::descriptors::{BinaryOp, UnaryOp};
use crate::dtype::{Element, FloatElement};
use crate::error::Result;
use crate::layout::{coalesce, Layout};
use crate::parallel::{for_each_chunk_pair_mut, rows_per_chunk, written_by_chunks};
use crate::storage::Storage;
use crate::with_float_type;

/// √(2/π), the constant of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;

/// σ(x) = 1 / (1 + e^−x); in f32 through [`exp_f32`], so that the loops over it (sigmoid,
/// SiLU, SwiGLU forward and backward) vectorise instead of calling `expf` per element.
#[inline(always)]
pub(crate) fn sigmoid<T: FloatElement>(x: T) -> T {
    if T::DTYPE == crate::DType::F32 {
        let x = x.to_f64() as f32;
        return T::from_f64(f64::from(1.0 / (1.0 + exp_f32(-x))));
    }
    T::one() / (T::one() + (-x).exp())
}

fn c<T: FloatElement>(v: f64) -> T {
    T::from_f64(v)
}

/// e^x in f32 without a library call, so that a loop over it vectorises: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by Cephes' degree-6 polynomial (`expf`, within 2 ulp), 2^n put in
/// the exponent bits. The input is clamped to [−87.3, 88], where e^x is a normal f32.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that n·LN2_HIGH is exact for the n that occur.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5·2²³ rounds to the nearest integer in the FPU's mode.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// GELU(x) = 0.5·x·(1 + tanh u), u = √(2/π)·(x + 0.044715·x³), with its derivative, in f32
/// through 0.5·(1 + tanh u) = σ(2u) = 1 / (1 + e^−2u): one [`exp_f32`] and a division per
/// element instead of a `tanhf` call, which keeps the loop from vectorising (the dense DiT's
/// MLP spent ~40% of its forward in `tanhf`). Agrees with the tanh form to a few f32 ulp.
#[inline(always)]
fn gelu_tanh_f32(x: f32) -> (f32, f32) {
    let (k, a) = (SQRT_2_OVER_PI as f32, GELU_CUBIC as f32);
    let u = k * (x + a * x * x * x);
    let e = exp_f32(-2.0 * u);
    let s = 1.0 / (1.0 + e);
    // 1 − s as e·s: no cancellation where s is near 1.
    let du = k * (1.0 + 3.0 * a * x * x);
    (x * s, s + 2.0 * x * s * (e * s) * du)
}

/// [`gelu_tanh_f32`] for an element type that is f32 (its value or derivative), else `None`.
#[inline(always)]
fn gelu_tanh_fast<T: FloatElement>(x: T, derivative: bool) -> Option<T> {
    (T::DTYPE == crate::DType::F32).then(|| {
        let (value, slope) = gelu_tanh_f32(x.to_f64() as f32);
        T::from_f64(f64::from(if derivative { slope } else { value }))
    })
}

/// What a unary op computes on one element, and its derivative.
pub trait UnaryMath {
    /// f(x).
    fn apply<T: FloatElement>(self, x: T) -> T;
    /// f'(x).
    fn derivative<T: FloatElement>(self, x: T) -> T;
}

// Both methods inlined so that, called with a constant op, the match folds away and the
// caller's loop vectorises (as calls, GELU's forward and derivative took 4% and 8% of a dense
// DiT-S/2 step).
impl UnaryMath for UnaryOp {
    #[inline(always)]
    fn apply<T: FloatElement>(self, x: T) -> T {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => x.sqrt().recip(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Relu => x.max(T::zero()),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::GeluTanh => gelu_tanh_fast(x, false).unwrap_or_else(|| {
                let u = c::<T>(SQRT_2_OVER_PI) * (x + c::<T>(GELU_CUBIC) * x * x * x);
                c::<T>(0.5) * x * (T::one() + u.tanh())
            }),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Powf(p) => x.powf(c(p)),
            UnaryOp::AddScalar(s) => x + c(s),
            UnaryOp::MulScalar(s) => x * c(s),
        }
    }

    #[inline(always)]
    fn derivative<T: FloatElement>(self, x: T) -> T {
        let one = T::one();
        match self {
            UnaryOp::Neg => -one,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.recip(),
            UnaryOp::Sqrt => c::<T>(0.5) / x.sqrt(),
            UnaryOp::Rsqrt => c::<T>(-0.5) * x.powf(c(-1.5)),
            UnaryOp::Tanh => one - x.tanh() * x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x) * (one - sigmoid(x)),
            UnaryOp::Relu => {
                if x > T::zero() {
                    one
                } else {
                    T::zero()
                }
            }
            UnaryOp::Silu => {
                let s = sigmoid(x);
                s * (one + x * (one - s))
            }
            UnaryOp::GeluTanh => gelu_tanh_fast(x, true).unwrap_or_else(|| {
                let k = c::<T>(SQRT_2_OVER_PI);
                let a = c::<T>(GELU_CUBIC);
                let th = (k * (x + a * x * x * x)).tanh();
                let du = k * (one + c::<T>(3.0) * a * x * x);
                c::<T>(0.5) * (one + th) + c::<T>(0.5) * x * (one - th * th) * du
            }),
            UnaryOp::Sin => x.cos(),
            UnaryOp::Cos => -x.sin(),
            UnaryOp::Abs => {
                if x > T::zero() {
                    one
                } else if x < T::zero() {
                    -one
                } else {
                    T::zero()
                }
            }
            UnaryOp::Powf(p) => c::<T>(p) * x.powf(c(p - 1.0)),
            UnaryOp::AddScalar(_) => one,
            UnaryOp::MulScalar(s) => c(s),
        }
    }
}

fn indicator<T: FloatElement>(condition: bool) -> T {
    if condition {
        T::one()
    } else {
        T::zero()
    }
}

/// What a binary op computes on one pair of elements.
pub trait BinaryMath {
    fn apply<T: FloatElement>(self, a: T, b: T) -> T;
}

impl BinaryMath for BinaryOp {
    fn apply<T: FloatElement>(self, a: T, b: T) -> T {
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
}

/// Applies `f` to every element of `x` (any layout) into new contiguous storage.
fn map_elements<T: FloatElement>(x: &Operand, f: impl Fn(T) -> T + Sync + Send) -> Result<Storage> {
    let input = x.values::<T>()?;
    let chunk = crate::parallel::rows_per_chunk(input.len(), 1);
    // SAFETY: the chunks split the input's length, so each output element has an input.
    let out = unsafe {
        written_by_chunks(input.len(), chunk, input.len(), |i, out| {
            for (o, &v) in out.iter_mut().zip(&input[i * chunk..]) {
                o.write(f(v));
            }
        })
    };
    Ok(T::into_storage(out))
}

/// Storage offsets where each innermost row of a view (`shape`, `strides`) starts.
fn row_starts(shape: &[usize], strides: &[usize], offset: usize) -> Vec<usize> {
    let outer = shape.len().saturating_sub(1);
    Layout::new(shape[..outer].to_vec(), strides[..outer].to_vec(), offset)
        .offsets()
        .collect()
}

/// `f(a, b)` over two operands of one (broadcast) shape, reading both in place through their
/// strides. After merging back-to-back dimensions the work is a list of rows; along a row each
/// input either advances (stride 1), stays (a broadcast, stride 0) or jumps (any other
/// stride).
fn zip_map<T: FloatElement>(
    a: &Operand,
    b: &Operand,
    f: impl Fn(T, T) -> T + Sync + Send,
) -> Result<Storage> {
    let shape = a.shape();
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Ok(T::into_storage(Vec::new()));
    }
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
    let chunk = rows_per_chunk(numel, inner);
    // SAFETY: every match arm writes each element of its row, and the rows tile the chunk.
    let out = unsafe {
        written_by_chunks(numel, chunk, numel, |c, out| {
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
                            o.write(f(x, y));
                        }
                    }
                    (1, 0) => {
                        let y = b_data[rb];
                        for (o, &x) in out_row.iter_mut().zip(&a_data[ra..ra + inner]) {
                            o.write(f(x, y));
                        }
                    }
                    (0, 1) => {
                        let x = a_data[ra];
                        for (o, &y) in out_row.iter_mut().zip(&b_data[rb..rb + inner]) {
                            o.write(f(x, y));
                        }
                    }
                    _ => {
                        for (i, o) in out_row.iter_mut().enumerate() {
                            o.write(f(a_data[ra + i * sa], b_data[rb + i * sb]));
                        }
                    }
                }
            }
        })
    };
    Ok(T::into_storage(out))
}

pub(super) fn unary(x: &Operand, op: UnaryOp) -> Result<Storage> {
    // One monomorphised loop per op (the op a constant, so the body inlines and vectorises).
    macro_rules! per_op {
        ($T:ty: $($variant:ident),* ; $($param:ident),*) => {
            match op {
                $(UnaryOp::$variant => map_elements::<$T>(x, |v| UnaryOp::$variant.apply(v)),)*
                $(UnaryOp::$param(p) => map_elements::<$T>(x, move |v| UnaryOp::$param(p).apply(v)),)*
            }
        };
    }
    with_float_type!(x.dtype(), "unary", T => per_op!(T: Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu, Silu, GeluTanh, Sin, Cos, Abs; Powf, AddScalar, MulScalar))
}

pub(super) fn unary_backward(x: &Operand, op: UnaryOp, grad: &Operand) -> Result<Storage> {
    // GELU's derivative gets a loop of its own (the op a constant: the body vectorises).
    with_float_type!(x.dtype(), "unary_backward", T => match op {
        UnaryOp::GeluTanh => zip_map::<T>(x, grad, |x, g| g * UnaryOp::GeluTanh.derivative(x)),
        _ => zip_map::<T>(x, grad, |x, g| g * op.derivative(x)),
    })
}

pub(super) fn binary(a: &Operand, b: &Operand, op: BinaryOp) -> Result<Storage> {
    // One monomorphised loop per op: with the op a constant, the loop body inlines and
    // vectorises instead of matching on the op for every element.
    macro_rules! per_op {
        ($T:ty: $($variant:ident),*) => {
            match op {
                $(BinaryOp::$variant => zip_map::<$T>(a, b, |a, b| BinaryOp::$variant.apply(a, b)),)*
            }
        };
    }
    with_float_type!(a.dtype(), op.name(), T => per_op!(T: Add, Sub, Mul, Div, Maximum, Minimum, Gt, Lt, Eq))
}

pub(super) fn lerp(start: &Operand, end: &Operand, weight: f64) -> Result<Storage> {
    with_float_type!(start.dtype(), "lerp", T => {
        let w = T::from_f64(weight);
        zip_map::<T>(start, end, |a, b| a + w * (b - a))
    })
}

pub(super) fn where_cond(
    condition: &Operand,
    on_true: &Operand,
    on_false: &Operand,
) -> Result<Storage> {
    let mask: Vec<bool> = condition.gathered_f64().iter().map(|&c| c != 0.0).collect();
    crate::with_element_type!(on_true.dtype(), T => {
        let (a, b) = (on_true.values::<T>()?, on_false.values::<T>()?);
        let out: Vec<T> = mask.iter().zip(a.iter().zip(b.iter())).map(|(&m, (&x, &y))| if m { x } else { y }).collect();
        Ok(T::into_storage(out))
    })
}

fn swiglu_typed<T: FloatElement>(gate: &Operand, up: &Operand) -> Result<Storage> {
    let (g, u) = (gate.values::<T>()?, up.values::<T>()?);
    let n = g.len();
    let chunk = rows_per_chunk(n, 1);
    // SAFETY: the loop writes every element of its chunk.
    let out = unsafe {
        written_by_chunks(n, chunk, n, |c, out| {
            // Zipped sub-slices, not indices, so the loop has no bounds checks and vectorises.
            let range = c * chunk..c * chunk + out.len();
            for ((o, &g), &u) in out.iter_mut().zip(&g[range.clone()]).zip(&u[range]) {
                o.write(g * sigmoid(g) * u);
            }
        })
    };
    Ok(T::into_storage(out))
}

fn swiglu_backward_typed<T: FloatElement>(
    gate: &Operand,
    up: &Operand,
    grad: &Operand,
) -> Result<(Storage, Storage)> {
    let (g, u, dh) = (gate.values::<T>()?, up.values::<T>()?, grad.values::<T>()?);
    let n = g.len();
    let (mut dgate, mut dup) = (vec![T::zero(); n], vec![T::zero(); n]);
    let chunk = rows_per_chunk(n, 1);
    for_each_chunk_pair_mut(&mut dgate, &mut dup, chunk, n, |c, dgate, dup| {
        let range = c * chunk..c * chunk + dgate.len();
        let inputs = g[range.clone()]
            .iter()
            .zip(&u[range.clone()])
            .zip(&dh[range]);
        for ((dg, du), ((&g, &u), &dh)) in dgate.iter_mut().zip(dup.iter_mut()).zip(inputs) {
            let s = sigmoid(g);
            *dg = dh * u * s * (T::one() + g * (T::one() - s));
            *du = dh * g * s;
        }
    });
    Ok((T::into_storage(dgate), T::into_storage(dup)))
}

pub(super) fn swiglu(gate: &Operand, up: &Operand) -> Result<Storage> {
    with_float_type!(gate.dtype(), "swiglu", T => swiglu_typed::<T>(gate, up))
}

pub(super) fn swiglu_backward(
    gate: &Operand,
    up: &Operand,
    grad: &Operand,
) -> Result<(Storage, Storage)> {
    with_float_type!(gate.dtype(), "swiglu_backward", T => swiglu_backward_typed::<T>(gate, up, grad))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GELU(x) and GELU'(x) in f64 with the library tanh: the reference.
    fn gelu_reference(x: f64) -> (f64, f64) {
        let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x.powi(3));
        let th = u.tanh();
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
        (
            0.5 * x * (1.0 + th),
            0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du,
        )
    }

    #[test]
    fn the_vectorisable_exp_is_within_3_ulp_of_f64() {
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (f64::from(exp_f32(x)), f64::from(x).exp());
            assert!(
                ((got - want) / want).abs() < 3.0 * f64::from(f32::EPSILON),
                "e^{x}: {got} vs {want}"
            );
        }
        assert!(exp_f32(-1000.0) < 1e-37 && exp_f32(1000.0).is_finite());
    }

    #[test]
    fn the_f32_sigmoid_matches_f64() {
        for i in 0..=200_000 {
            let x = -80.0 + 160.0 * i as f32 / 200_000.0;
            let (got, want) = (f64::from(sigmoid(x)), 1.0 / (1.0 + (-f64::from(x)).exp()));
            assert!(
                ((got - want) / want).abs() < 4.0 * f64::from(f32::EPSILON),
                "σ({x}): {got} vs {want}"
            );
        }
        // Saturated ends: 1 exactly above, a vanishing positive number below.
        assert_eq!(sigmoid(200.0f32), 1.0);
        assert!(sigmoid(-200.0f32) >= 0.0 && sigmoid(-200.0f32) < 1e-37);
    }

    #[test]
    fn the_f32_gelu_matches_the_tanh_form_in_f64() {
        for i in 0..=20_000 {
            let x = -12.0 + 24.0 * i as f32 / 20_000.0;
            let (value, slope) = gelu_tanh_f32(x);
            let (want_value, want_slope) = gelu_reference(f64::from(x));
            // Absolute error of a few ulp of 1 (the 1 + tanh), relative for large |x|.
            let scale = 1.0 + want_value.abs();
            assert!(
                (f64::from(value) - want_value).abs() < 4e-7 * scale,
                "GELU({x}): {value} vs {want_value}"
            );
            assert!(
                (f64::from(slope) - want_slope).abs() < 1e-6,
                "GELU'({x}): {slope} vs {want_slope}"
            );
        }
        let huge = gelu_tanh_f32(-1e4);
        assert_eq!((huge.0.abs() < 1e-20, huge.1.abs() < 1e-20), (true, true));
        assert_eq!(gelu_tanh_f32(1e4), (1e4, 1.0));
    }
}
