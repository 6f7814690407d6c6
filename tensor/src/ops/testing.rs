//! Helpers shared by the kernel tests: seeded random tensors with awkward layouts, and the
//! workspace's tolerance check ([`crate::compare::assert_close`]).

pub use crate::compare::assert_close;
use crate::{seeded_rng, Tensor};
use rand::Rng;

/// A random f64 tensor of `shape` with values uniform in `[lo, hi)`, laid out with gaps
/// (every other element of a larger buffer), so kernels see a non-contiguous input.
pub fn random_strided(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor {
    let mut padded = shape.to_vec();
    padded.push(2);
    let numel: usize = padded.iter().product();
    let mut rng = seeded_rng(seed);
    let values: Vec<f64> = (0..numel).map(|_| rng.random_range(lo..hi)).collect();
    let t = Tensor::from_vec(values, &padded).unwrap();
    t.narrow(shape.len(), 1, 1)
        .unwrap()
        .squeeze(shape.len())
        .unwrap()
}

/// Row-major multi-index of linear position `i` in `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        index[d] = i % shape[d];
        i /= shape[d];
    }
    index
}

/// Linear position of `index` in a row-major `shape`.
pub fn ravel(index: &[usize], shape: &[usize]) -> usize {
    index.iter().zip(shape).fold(0, |acc, (&i, &s)| acc * s + i)
}

/// The `[out, in]` slices of a stacked `[groups, out, in]` tensor.
pub fn per_group(stacked: &Tensor) -> Vec<Tensor> {
    (0..stacked.shape()[0])
        .map(|g| stacked.narrow(0, g, 1).unwrap().squeeze(0).unwrap())
        .collect()
}
