//! End to end: a 2-layer MLP fitted to a toy regression with plain SGD.

use ditmoe_autograd::{no_grad, Var};
use ditmoe_tensor::{seeded_rng, DType, Result, Tensor};

#[test]
fn sgd_fits_a_two_layer_mlp() -> Result<()> {
    let mut rng = seeded_rng(42);
    // y = sin(2·x0) + x1² on 64 points in [-1, 1]².
    let x = Tensor::rand_uniform(&[64, 2], -1.0, 1.0, DType::F32, &mut rng)?;
    let cols = x.split(&[1, 1], 1)?;
    let target = cols[0]
        .mul_scalar(2.0)?
        .sin()?
        .add(&cols[1].mul(&cols[1])?)?;
    let (x, target) = (Var::constant(x), Var::constant(target));

    let hidden = 32;
    let w1 = Var::parameter(Tensor::randn(&[2, hidden], 0.0, 0.7, DType::F32, &mut rng)?);
    let b1 = Var::parameter(Tensor::zeros(&[hidden], DType::F32)?);
    let w2 = Var::parameter(Tensor::randn(&[hidden, 1], 0.0, 0.2, DType::F32, &mut rng)?);
    let b2 = Var::parameter(Tensor::zeros(&[1], DType::F32)?);
    let mut params = vec![w1, b1, w2, b2];
    let initial = loss_with(&x, &target, &params)?.item()?;
    for _ in 0..500 {
        let l = loss_with(&x, &target, &params)?;
        l.backward()?;
        params = no_grad(|| {
            params
                .iter()
                .map(|p| {
                    Ok(Var::parameter(
                        p.value().sub(&p.grad().unwrap().mul_scalar(0.1)?)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()
        })?;
    }
    let last = loss_with(&x, &target, &params)?.item()?;
    assert!(
        last < initial / 10.0,
        "loss fell from {initial} only to {last}"
    );
    Ok(())
}

/// Mean squared error of tanh(x·W1 + b1)·W2 + b2.
fn loss_with(x: &Var, target: &Var, p: &[Var]) -> Result<Var> {
    let h = x.matmul(&p[0])?.add(&p[1])?.tanh()?;
    let y = h.matmul(&p[2])?.add(&p[3])?;
    y.sub(target)?.powf(2.0)?.mean_all()
}
