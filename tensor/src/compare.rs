//! Comparing computed numbers with references, as the parity tests of every crate do.

/// The largest |aᵢ − bᵢ| (the ∞-norm of the difference). A NaN on either side, or slices of
/// different lengths, count as infinitely far: a fold with `f64::max` would skip the NaN and
/// let a kernel that writes NaNs pass.
pub fn max_abs_difference<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let difference = (x.into() - y.into()).abs();
            if difference.is_nan() {
                f64::INFINITY
            } else {
                difference
            }
        })
        .fold(0.0, f64::max)
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
}
