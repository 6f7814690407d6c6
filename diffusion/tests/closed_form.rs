//! Objectives and samplers against closed-form cases.

use ditmoe_autograd::{check_gradients, Var};
use ditmoe_diffusion::*;
use ditmoe_tensor::{seeded_rng, DType, Result, Tensor};

fn ddpm(learn_sigma: bool) -> GaussianDiffusion {
    GaussianDiffusion::new(Schedule::new(BetaSchedule::Linear, 1000), learn_sigma)
}

fn image(seed: u64) -> Tensor {
    Tensor::rand_uniform(&[2, 3, 4, 4], -0.9, 0.9, DType::F32, &mut seeded_rng(seed)).unwrap()
}

fn options(steps: usize) -> SampleOptions {
    SampleOptions {
        steps,
        clip_denoised: true,
        flow_time_scale: 1.0,
    }
}

#[test]
fn q_sample_has_the_forward_process_statistics() {
    let d = ddpm(false);
    let n = 200_000;
    let x0 = Tensor::full(&[n, 1, 1, 1], 0.5, DType::F64).unwrap();
    let noise = Tensor::randn(&[n, 1, 1, 1], 0.0, 1.0, DType::F64, &mut seeded_rng(1)).unwrap();
    let x_t = d.q_sample(&x0, &vec![500; n], &noise).unwrap().to_vec_f64();
    let a = d.schedule.alphas_cumprod[500];
    let mean = x_t.iter().sum::<f64>() / n as f64;
    let var = x_t.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    assert!((mean - 0.5 * a.sqrt()).abs() < 0.01, "{mean}");
    assert!((var - (1.0 - a)).abs() < 0.01, "{var}");
}

/// The model that knows x0: ε̂ = (x_t − √ᾱ_t x0)/√(1 − ᾱ_t), plus variance channels at −1.
fn oracle<'a>(
    d: &'a GaussianDiffusion,
    x0: &'a Tensor,
    learn_sigma: bool,
) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> + 'a {
    move |x, t| {
        let steps: Vec<usize> = t.to_vec_f64().iter().map(|&t| t as usize).collect();
        let a = &d.schedule.alphas_cumprod;
        let signal = Tensor::from_vec(
            steps.iter().map(|&s| a[s].sqrt() as f32).collect(),
            &[steps.len(), 1, 1, 1],
        )?;
        let sigma = Tensor::from_vec(
            steps.iter().map(|&s| (1.0 - a[s]).sqrt() as f32).collect(),
            &[steps.len(), 1, 1, 1],
        )?;
        let eps = x.sub(&x0.mul(&signal)?)?.div(&sigma)?;
        if learn_sigma {
            Tensor::concat(&[&eps, &Tensor::full(eps.shape(), -1.0, DType::F32)?], 1)
        } else {
            Ok(eps)
        }
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    ditmoe_tensor::compare::max_abs_difference(&a.to_vec_f64(), &b.to_vec_f64())
}

#[test]
fn an_oracle_model_recovers_x0_with_every_sampler() {
    let x0 = image(2);
    for learn_sigma in [false, true] {
        let d = ddpm(learn_sigma);
        let model = oracle(&d, &x0, learn_sigma);
        for kind in [
            SamplerKind::Ddpm,
            SamplerKind::Ddim { eta: 0.0 },
            SamplerKind::Ddim { eta: 1.0 },
        ] {
            let out = sample(
                &d,
                &model,
                x0.shape(),
                kind,
                options(50),
                &mut seeded_rng(3),
            )
            .unwrap();
            assert!(
                max_diff(&out, &x0) < 1e-3,
                "{kind:?} learn_sigma={learn_sigma}: {}",
                max_diff(&out, &x0)
            );
        }
    }
    // Flow: the velocity along the straight path from x0 to the starting noise is constant.
    let start = Tensor::randn(x0.shape(), 0.0, 1.0, DType::F32, &mut seeded_rng(4)).unwrap();
    let velocity = start.sub(&x0).unwrap();
    let flow_model = |_: &Tensor, _: &Tensor| Ok(velocity.clone());
    let out = sample_from(
        &ddpm(false),
        &flow_model,
        start.clone(),
        SamplerKind::Euler,
        options(7),
        &mut seeded_rng(5),
    )
    .unwrap();
    assert!(max_diff(&out, &x0) < 1e-5);
}

#[test]
fn ddim_with_eta_zero_is_deterministic_and_ddpm_is_not() {
    let d = ddpm(false);
    let model = |x: &Tensor, _: &Tensor| x.mul_scalar(0.3);
    let start = image(6);
    let run = |kind, seed| {
        sample_from(
            &d,
            &model,
            start.clone(),
            kind,
            options(20),
            &mut seeded_rng(seed),
        )
        .unwrap()
    };
    let ddim = SamplerKind::Ddim { eta: 0.0 };
    assert_eq!(run(ddim, 1).to_vec_f64(), run(ddim, 2).to_vec_f64());
    assert_ne!(
        run(SamplerKind::Ddpm, 1).to_vec_f64(),
        run(SamplerKind::Ddpm, 2).to_vec_f64()
    );
    assert_eq!(
        run(SamplerKind::Ddpm, 1).to_vec_f64(),
        run(SamplerKind::Ddpm, 1).to_vec_f64(),
        "seeded"
    );
}

#[test]
fn the_exact_prediction_has_zero_loss() {
    let d = ddpm(true);
    let x0 = image(7).to_dtype(DType::F64).unwrap();
    let noise = Tensor::randn(x0.shape(), 0.0, 1.0, DType::F64, &mut seeded_rng(8)).unwrap();
    let t = [10, 700];
    let x_t = d.q_sample(&x0, &t, &noise).unwrap();
    // ε̂ = ε and v = −1 (log σ² = log β̃_t, the true posterior variance): MSE and KL vanish.
    let out = Tensor::concat(
        &[
            &noise,
            &Tensor::full(noise.shape(), -1.0, DType::F64).unwrap(),
        ],
        1,
    )
    .unwrap();
    let terms = d
        .training_losses(&Var::constant(out), &x0, &x_t, &t, &noise)
        .unwrap();
    assert!(terms.mse.item().unwrap() < 1e-20);
    assert!(terms.vb.unwrap().item().unwrap().abs() < 1e-9);
}

#[test]
fn the_loss_is_differentiable_in_the_model_output() {
    let d = ddpm(true);
    let x0 = image(9).to_dtype(DType::F64).unwrap();
    let noise = Tensor::randn(x0.shape(), 0.0, 1.0, DType::F64, &mut seeded_rng(10)).unwrap();
    let t = [0, 400]; // t = 0 takes the decoder NLL, t > 0 the KL
    let x_t = d.q_sample(&x0, &t, &noise).unwrap();
    let eps = Tensor::randn(&[2, 3, 4, 4], 0.0, 1.0, DType::F64, &mut seeded_rng(11)).unwrap();
    let v =
        Tensor::rand_uniform(&[2, 3, 4, 4], -0.9, 0.9, DType::F64, &mut seeded_rng(12)).unwrap();
    let loss =
        |eps: &Var, v: &Var| d.training_losses(&Var::concat(&[eps, v], 1)?, &x0, &x_t, &t, &noise);
    // The variance channels get the whole loss's gradient (ε̂ held fixed)…
    check_gradients(
        |p| Ok(loss(&Var::constant(eps.clone()), &p[0])?.total),
        std::slice::from_ref(&v),
    )
    .unwrap();
    // …and the ε channels only the MSE's: the bound sees ε̂ through a stop-gradient.
    check_gradients(
        |p| Ok(loss(&p[0], &Var::constant(v.clone()))?.mse),
        std::slice::from_ref(&eps),
    )
    .unwrap();
    let eps_var = Var::parameter(eps.clone());
    loss(&eps_var, &Var::constant(v.clone()))
        .unwrap()
        .total
        .backward()
        .unwrap();
    let expected = eps
        .sub(&noise)
        .unwrap()
        .mul_scalar(2.0 / eps.numel() as f64)
        .unwrap();
    assert!(max_diff(&eps_var.grad().unwrap(), &expected) < 1e-15);
}

#[test]
fn flow_interpolation_endpoints() {
    let x0 = image(12);
    let noise = image(13);
    let (z, v) = flow_interpolate(&x0, &noise, &[0.0, 1.0]).unwrap();
    let first = |t: &Tensor| t.narrow(0, 0, 1).unwrap().to_vec_f64();
    let second = |t: &Tensor| t.narrow(0, 1, 1).unwrap().to_vec_f64();
    assert_eq!(first(&z), first(&x0));
    assert_eq!(second(&z), second(&noise));
    assert_eq!(v.to_vec_f64(), noise.sub(&x0).unwrap().to_vec_f64());
    let out = Var::constant(Tensor::concat(&[&v, &v], 1).unwrap());
    assert!(flow_loss(&out, &v).unwrap().item().unwrap() < 1e-20);
}
