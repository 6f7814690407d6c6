//! Helpers shared by the nn tests.

#![allow(dead_code)]

use ditmoe_autograd::{GradCheck, Var};
use ditmoe_nn::Module;
use ditmoe_tensor::{seeded_rng, DType, Result, Tensor};

/// A random f64 tensor N(0, 1).
pub fn normal(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut seeded_rng(seed)).unwrap()
}

/// Casts `module` to f64 and redraws every parameter from N(0, std²), so zero-initialised
/// paths (adaLN-Zero, the final layer) carry gradient too.
pub fn randomized_f64(module: &dyn Module, std: f64, seed: u64) {
    module.cast(DType::F64).unwrap();
    module.randomize(std, seed).unwrap();
}

/// Finite-difference check of `f` with respect to `inputs` and every parameter of `module`;
/// a failure names the parameter.
pub fn check_module(module: &dyn Module, inputs: &[Var], f: impl Fn() -> Result<Var>) {
    let params = module.named_parameters();
    let mut names: Vec<String> = (0..inputs.len()).map(|i| format!("input {i}")).collect();
    names.extend(params.iter().map(|(n, _)| n.clone()));
    let mut leaves = inputs.to_vec();
    leaves.extend(params.into_iter().map(|(_, v)| v));
    if let Err(failure) = GradCheck::default().check_leaves(f, &leaves) {
        let which = match &failure {
            ditmoe_autograd::GradCheckFailure::Mismatch { input, .. } => names[*input].clone(),
            _ => String::new(),
        };
        panic!("{which}: {failure}");
    }
}

/// ‖a − b‖∞.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    ditmoe_tensor::compare::max_abs_difference(&a.to_vec_f64(), &b.to_vec_f64())
}

/// A DiT batch of `n`: images N(0, 1) `[n, C, H, W]`, timesteps spread over [0, 1000) and labels
/// cycling through the classes.
pub fn dit_inputs(n: usize, config: &ditmoe_nn::DitConfig) -> (Tensor, Tensor, Tensor) {
    let rng = &mut seeded_rng(11);
    let shape = [n, config.in_channels, config.input_size, config.input_size];
    let x = Tensor::randn(&shape, 0.0, 1.0, DType::F32, rng).unwrap();
    let t = Tensor::from_vec((0..n).map(|i| (i * 97 % 1000) as f32).collect(), &[n]).unwrap();
    let labels = (0..n).map(|i| (i % config.num_classes) as i64).collect();
    (x, t, Tensor::from_vec(labels, &[n]).unwrap())
}
