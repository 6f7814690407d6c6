//! Constructors: constants, ranges, and random tensors from an explicitly seeded RNG.

use crate::backend::on_device;
use crate::dtype::DType;
use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::storage::Storage;
use crate::{Device, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};

/// The RNG every random draw in ditmoe comes from: ChaCha8, whose stream is fixed by its seed
/// on every platform and library version (unlike `StdRng`).
pub type SeededRng = rand_chacha::ChaCha8Rng;

/// A [`SeededRng`] started from `seed`.
pub fn seeded_rng(seed: u64) -> SeededRng {
    rand::SeedableRng::seed_from_u64(seed)
}

fn from_fn(shape: &[usize], dtype: DType, value: impl FnMut(usize) -> f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_storage(Storage::from_fn(dtype, n, value), Layout::contiguous(shape))
}

impl Tensor {
    /// A tensor of `shape` filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Result<Tensor> {
        Ok(from_fn(shape, dtype, |_| value))
    }
    pub fn zeros(shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::full(shape, 0.0, dtype)
    }
    pub fn ones(shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::full(shape, 1.0, dtype)
    }
    /// Zeros of `shape` on `device` (on a GPU, a device memset: nothing crosses the bus).
    pub fn zeros_on(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let storage = on_device(device, |backend| backend.zeros(shape, dtype))?;
        Ok(Tensor::from_backend(
            storage,
            Layout::contiguous(shape),
            device,
        ))
    }
    /// Zeros with this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros_on(self.shape(), self.dtype(), self.device())
    }

    /// `start, start + step, …` up to but excluding `end`.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || (end - start) / step < 0.0 {
            return Err(TensorError::invalid(
                "arange",
                format!("expected a finite non-zero step moving from {start} toward {end}, found {step}"),
            ));
        }
        let n = ((end - start) / step).ceil() as usize;
        Ok(from_fn(&[n], dtype, |i| start + i as f64 * step))
    }

    /// Samples of N(mean, std²).
    pub fn randn(
        shape: &[usize],
        mean: f64,
        std: f64,
        dtype: DType,
        rng: &mut impl Rng,
    ) -> Result<Tensor> {
        let normal = Normal::new(mean, std).map_err(|e| {
            TensorError::invalid(
                "randn",
                format!("expected a finite std >= 0, found {std}: {e}"),
            )
        })?;
        Ok(from_fn(shape, dtype, |_| normal.sample(rng)))
    }

    /// Samples of U[low, high).
    pub fn rand_uniform(
        shape: &[usize],
        low: f64,
        high: f64,
        dtype: DType,
        rng: &mut impl Rng,
    ) -> Result<Tensor> {
        let uniform = Uniform::new(low, high).map_err(|e| {
            TensorError::invalid(
                "rand_uniform",
                format!("expected low < high, found [{low}, {high}): {e}"),
            )
        })?;
        Ok(from_fn(shape, dtype, |_| uniform.sample(rng)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_and_constants() {
        let t = Tensor::arange(1.0, 2.0, 0.25, DType::F32).unwrap();
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, 1.25, 1.5, 1.75]);
        assert_eq!(
            Tensor::arange(3.0, 0.0, -1.0, DType::I64)
                .unwrap()
                .to_vec::<i64>()
                .unwrap(),
            vec![3, 2, 1]
        );
        assert!(Tensor::arange(0.0, 1.0, -1.0, DType::F32).is_err());
        assert_eq!(
            Tensor::ones(&[2, 2], DType::BF16).unwrap().to_vec_f64(),
            vec![1.0; 4]
        );
    }

    #[test]
    fn random_tensors_are_determined_by_the_seed() {
        let a = Tensor::randn(&[1000], 2.0, 3.0, DType::F64, &mut seeded_rng(5)).unwrap();
        let b = Tensor::randn(&[1000], 2.0, 3.0, DType::F64, &mut seeded_rng(5)).unwrap();
        let c = Tensor::randn(&[1000], 2.0, 3.0, DType::F64, &mut seeded_rng(6)).unwrap();
        assert_eq!(a.to_vec_f64(), b.to_vec_f64());
        assert_ne!(a.to_vec_f64(), c.to_vec_f64());
        let v = a.to_vec_f64();
        let mean = v.iter().sum::<f64>() / 1000.0;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 999.0;
        assert!(
            (mean - 2.0).abs() < 0.3 && (var.sqrt() - 3.0).abs() < 0.3,
            "{mean} {var}"
        );
        let u = Tensor::rand_uniform(&[1000], -1.0, 1.0, DType::F32, &mut seeded_rng(1)).unwrap();
        assert!(u.to_vec_f64().iter().all(|&x| (-1.0..1.0).contains(&x)));
        assert!(Tensor::rand_uniform(&[1], 1.0, 1.0, DType::F32, &mut seeded_rng(1)).is_err());
    }
}
