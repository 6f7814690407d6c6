//! Comparing computed numbers with references, as the parity tests of every crate do (the
//! kernel tests of `ditmoe-cuda` too, through its dev-dependency on this crate).
//!
//! One rule throughout: a NaN on either side, or slices of different lengths, count as
//! infinitely far, so a kernel that writes NaNs can never pass. (A fold with `f64::max` would
//! skip the NaN; a test that lets NaN equal NaN would pass a kernel that writes only NaNs where
//! the reference does.)

/// |a − b|, or ∞ where either is NaN.
fn distance(a: f64, b: f64) -> f64 {
    let difference = (a - b).abs();
    if difference.is_nan() {
        f64::INFINITY
    } else {
        difference
    }
}

/// The largest |aᵢ − bᵢ| (the ∞-norm of the difference); ∞ for a NaN or a length mismatch.
pub fn max_abs_difference<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| distance(x.into(), y.into()))
        .fold(0.0, f64::max)
}

/// Fails naming the first element where `|a − e| > tol · (1 + |e|)` (a NaN on either side
/// fails), or the length when the slices differ in it.
#[track_caller]
pub fn assert_close<T>(actual: &[T], expected: &[T], tol: T, what: &str)
where
    T: Copy + Into<f64> + std::fmt::Display,
{
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let tol: f64 = tol.into();
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let e64: f64 = e.into();
        assert!(
            distance(a.into(), e64) <= tol * (1.0 + e64.abs()),
            "{what}: element {i}: got {a}, expected {e}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_is_never_close() {
        assert_eq!(max_abs_difference(&[1.0f32, 2.0], &[1.5, 2.0]), 0.5);
        assert_eq!(
            max_abs_difference(&[1.0f64, f64::NAN], &[1.0, 2.0]),
            f64::INFINITY
        );
        assert_eq!(max_abs_difference(&[f64::NAN], &[f64::NAN]), f64::INFINITY);
        assert_eq!(max_abs_difference(&[1.0f64], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(max_abs_difference::<f64>(&[], &[]), 0.0);
    }

    #[test]
    fn close_values_pass_with_a_tolerance_relative_to_the_expected() {
        assert_close(&[1.0f32, 100.5], &[1.0, 100.0], 1e-2, "f32");
        assert_close(&[-2.0f64, 0.0], &[-2.0, 1e-7], 1e-6, "f64");
        assert_close::<f64>(&[], &[], 0.0, "empty");
    }

    #[test]
    #[should_panic(expected = "nan both sides: element 1")]
    fn assert_close_fails_on_nan_even_against_nan() {
        assert_close(&[1.0f32, f32::NAN], &[1.0, f32::NAN], 1.0, "nan both sides");
    }

    #[test]
    #[should_panic(expected = "nan got: element 0")]
    fn assert_close_fails_on_a_nan_result() {
        assert_close(&[f64::NAN], &[1.0], 1e9, "nan got");
    }

    #[test]
    #[should_panic(expected = "mismatch: element 1: got 2.5, expected 2")]
    fn assert_close_fails_on_a_mismatch() {
        assert_close(&[1.0f64, 2.5], &[1.0, 2.0], 1e-3, "mismatch");
    }

    #[test]
    #[should_panic(expected = "short: length")]
    fn assert_close_fails_on_a_length_mismatch() {
        assert_close(&[1.0f64], &[1.0, 2.0], 1.0, "short");
    }
}
