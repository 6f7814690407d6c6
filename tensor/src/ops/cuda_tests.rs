//! Tensors on `cuda:0` against the same ops on the CPU. `cuda:0` is the real GPU when the
//! driver has one, else the PTX emulator (the test says which), so the device path is checked
//! on every machine.

use crate::compare::max_abs_difference;
use crate::ops::reduce::ReduceOp;
use crate::ops::testing::{assert_close, per_group, random_strided};
use crate::ops::unary::UnaryOp;
use crate::{DType, Device, GroupSizes, Tensor, TensorError};
use ditmoe_cuda::precision::{self, PrecisionGuard};

const GPU: Device = Device::Cuda(0);

/// `t` on cuda:0, as f32.
fn on_gpu(t: &Tensor) -> Tensor {
    ditmoe_cuda::registry::device_or_emulator(0);
    t.to_dtype(DType::F32).unwrap().to_device(GPU).unwrap()
}

/// Exact f32 products (tensor cores off) on this thread until the guard drops: what the
/// comparisons with the CPU's products need. Without it, products run in mixed precision.
fn exact_products() -> PrecisionGuard {
    precision::set(precision::current().with_tensor_cores(false))
}

fn check(gpu: &Tensor, cpu: &Tensor, tol: f64, what: &str) {
    assert_eq!(gpu.device(), GPU, "{what}: result left the GPU");
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shape");
    assert_close(&gpu.to_vec_f64(), &cpu.to_vec_f64(), tol, what);
}

/// The values rounded to bf16 and back: what the tensor cores multiply in mixed precision.
fn round(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn f32_cpu(shape: &[usize], seed: u64) -> Tensor {
    random_strided(shape, -2.0, 2.0, seed)
        .to_dtype(DType::F32)
        .unwrap()
}

#[test]
fn tensors_round_trip_and_views_stay_views() {
    let x = f32_cpu(&[3, 5], 1);
    let g = on_gpu(&x);
    assert_eq!(
        g.to_device(Device::Cpu).unwrap().to_vec::<f32>().unwrap(),
        x.to_vec::<f32>().unwrap()
    );
    // A transposed slice downloads (and copies on the device) in logical order.
    let view = g.t().unwrap().narrow(0, 1, 3).unwrap();
    assert_eq!(view.device(), GPU);
    check(
        &view.contiguous(),
        &x.t().unwrap().narrow(0, 1, 3).unwrap(),
        0.0,
        "view",
    );
    let idx = Tensor::from_vec(vec![4i64, 0, 2], &[3]).unwrap();
    let back = idx.to_device(GPU).unwrap().to_device(Device::Cpu).unwrap();
    assert_eq!(back.to_vec::<i64>().unwrap(), vec![4, 0, 2]);
    let negative = Tensor::from_vec(vec![-1i64], &[1]).unwrap();
    assert!(negative.to_device(GPU).is_err());
}

#[test]
fn concat_copies_strided_pieces_of_either_dtype() {
    let (a, b_source) = (f32_cpu(&[2, 3, 4], 70), f32_cpu(&[2, 4, 3], 71));
    let b = b_source.transpose(1, 2).unwrap(); // a strided piece
    let expected = Tensor::concat(&[&a, &b], 2).unwrap();
    let b_on_gpu = on_gpu(&b_source).transpose(1, 2).unwrap();
    let got = Tensor::concat(&[&on_gpu(&a), &b_on_gpu], 2).unwrap();
    check(&got, &expected, 0.0, "concat");
    let (i, j) = (
        Tensor::from_vec(vec![1i64, 2], &[2]).unwrap(),
        Tensor::from_vec(vec![7i64], &[1]).unwrap(),
    );
    let joined =
        Tensor::concat(&[&i.to_device(GPU).unwrap(), &j.to_device(GPU).unwrap()], 0).unwrap();
    assert_eq!(
        joined
            .to_device(Device::Cpu)
            .unwrap()
            .to_vec::<i64>()
            .unwrap(),
        vec![1, 2, 7]
    );
    let err = Tensor::concat(&[&on_gpu(&a), &a], 2).unwrap_err();
    assert!(matches!(err, TensorError::DeviceMismatch { .. }), "{err}");
}

#[test]
fn elementwise_ops_broadcast_over_strided_views() {
    let a = f32_cpu(&[4, 1, 6], 2);
    let b = f32_cpu(&[3, 6], 3).t().unwrap().t().unwrap();
    let (ga, gb) = (on_gpu(&a), on_gpu(&b));
    check(&ga.add(&gb).unwrap(), &a.add(&b).unwrap(), 1e-6, "add");
    check(&ga.mul(&gb).unwrap(), &a.mul(&b).unwrap(), 1e-6, "mul");
    let at = a.permute(&[2, 1, 0]).unwrap();
    check(
        &on_gpu(&a)
            .permute(&[2, 1, 0])
            .unwrap()
            .sub(&on_gpu(&at))
            .unwrap(),
        &at.sub(&at).unwrap(),
        1e-6,
        "permuted sub",
    );
    for op in [
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
        UnaryOp::Exp,
        UnaryOp::MulScalar(0.5),
    ] {
        check(&ga.unary(op).unwrap(), &a.unary(op).unwrap(), 1e-5, "unary");
        let grad = f32_cpu(a.shape(), 4);
        check(
            &ga.unary_backward(op, &on_gpu(&grad)).unwrap(),
            &a.unary_backward(op, &grad).unwrap(),
            1e-5,
            "unary backward",
        );
    }
}

#[test]
fn matmul_reads_transposed_operands_and_broadcasts_a_rank_two_rhs() {
    let _exact = exact_products();
    let x = f32_cpu(&[2, 5, 7], 5);
    let w = f32_cpu(&[9, 7], 6); // a linear layer's weight: x · wᵀ
    check(
        &on_gpu(&x).matmul(&on_gpu(&w).t().unwrap()).unwrap(),
        &x.matmul(&w.t().unwrap()).unwrap(),
        1e-5,
        "x·wᵀ",
    );
    let y = f32_cpu(&[2, 7, 4], 7);
    check(
        &on_gpu(&x).matmul(&on_gpu(&y)).unwrap(),
        &x.matmul(&y).unwrap(),
        1e-5,
        "batched",
    );
    let xt = x.transpose(1, 2).unwrap(); // [2, 7, 5]: a transposed lhs
    let z = f32_cpu(&[2, 5, 3], 8);
    check(
        &on_gpu(&x)
            .transpose(1, 2)
            .unwrap()
            .matmul(&on_gpu(&z))
            .unwrap(),
        &xt.matmul(&z).unwrap(),
        1e-5,
        "xᵀ·z",
    );
}

#[test]
fn mixed_precision_matmul_uses_the_tensor_cores_where_the_shape_fits() {
    // The default: bf16 operands, f32 accumulation.
    assert!(precision::current().tensor_core_matmul);
    let x = f32_cpu(&[3, 16, 24], 20);
    let w = f32_cpu(&[40, 24], 21);
    let got = on_gpu(&x).matmul(&on_gpu(&w).t().unwrap()).unwrap();
    // Exactly the product of the bf16-rounded operands (up to f32 summation order) ...
    let expected = round(&x).matmul(&round(&w).t().unwrap()).unwrap();
    assert_close(
        &got.to_vec_f64(),
        &expected.to_vec_f64(),
        1e-5,
        "bf16 tensor cores",
    );
    // ... and within bf16 precision (2^-8 per operand) of the f32 product, on the output's scale.
    let exact = x.matmul(&w.t().unwrap()).unwrap().to_vec_f64();
    let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = max_abs_difference(&got.to_vec_f64(), &exact);
    assert!(
        worst > 0.0 && worst < 2e-2 * scale,
        "{worst} vs scale {scale}"
    );
    // K = 7 does not fit the tensor-core tiles: the f32 SIMT GEMM runs, exactly.
    let (p, q) = (f32_cpu(&[5, 7], 22), f32_cpu(&[7, 6], 23));
    let got = on_gpu(&p).matmul(&on_gpu(&q)).unwrap();
    assert_close(
        &got.to_vec_f64(),
        &p.matmul(&q).unwrap().to_vec_f64(),
        1e-5,
        "fallback",
    );
}

#[test]
fn softmax_reductions_and_layer_norm_match_the_cpu() {
    let x = f32_cpu(&[3, 4, 10], 9);
    let g = on_gpu(&x);
    for dim in [0, 2] {
        check(
            &g.softmax(dim).unwrap(),
            &x.softmax(dim).unwrap(),
            1e-5,
            "softmax",
        );
    }
    check(
        &g.sum(&[0, 2], true).unwrap(),
        &x.sum(&[0, 2], true).unwrap(),
        1e-5,
        "sum",
    );
    check(
        &g.mean(&[1], false).unwrap(),
        &x.mean(&[1], false).unwrap(),
        1e-5,
        "mean",
    );
    check(
        &g.max(&[2], false).unwrap(),
        &x.max(&[2], false).unwrap(),
        0.0,
        "max",
    );
    let (w, b) = (f32_cpu(&[10], 10), f32_cpu(&[10], 11));
    let (out, stats) = x.layer_norm_with_stats(Some(&w), Some(&b), 1e-6).unwrap();
    let (gout, gstats) = g
        .layer_norm_with_stats(Some(&on_gpu(&w)), Some(&on_gpu(&b)), 1e-6)
        .unwrap();
    check(&gout, &out, 1e-4, "layer_norm");
    let dy = f32_cpu(x.shape(), 12);
    let grads = x.layer_norm_backward(&stats, Some(&w), true, &dy).unwrap();
    let ggrads = g
        .layer_norm_backward(&gstats, Some(&on_gpu(&w)), true, &on_gpu(&dy))
        .unwrap();
    check(&ggrads.input, &grads.input, 1e-4, "layer_norm dx");
    check(
        ggrads.weight.as_ref().unwrap(),
        grads.weight.as_ref().unwrap(),
        1e-4,
        "dweight",
    );
    check(
        ggrads.bias.as_ref().unwrap(),
        grads.bias.as_ref().unwrap(),
        1e-4,
        "dbias",
    );
}

#[test]
fn where_cond_broadcasts_and_cpu_scalars_meet_device_tensors() {
    let x = f32_cpu(&[3, 4], 30);
    let y = f32_cpu(&[4], 31);
    let cond = x.gt(&Tensor::full(&[], 0.0, DType::F32).unwrap()).unwrap();
    let expected = Tensor::where_cond(&cond, &x, &y).unwrap();
    let (gx, gy) = (on_gpu(&x), on_gpu(&y));
    // The comparison takes a CPU scalar, as PyTorch allows.
    let gcond = gx.gt(&Tensor::full(&[], 0.0, DType::F32).unwrap()).unwrap();
    check(
        &Tensor::where_cond(&gcond, &gx, &gy).unwrap(),
        &expected,
        0.0,
        "where",
    );
    // Infinite values in the branch not taken do not leak into the result.
    let inf = Tensor::full(&[3, 4], f64::INFINITY, DType::F32).unwrap();
    let masked = Tensor::where_cond(&gcond, &gx, &on_gpu(&inf)).unwrap();
    let cpu_masked = Tensor::where_cond(&cond, &x, &inf).unwrap();
    assert_eq!(masked.to_vec_f64(), cpu_masked.to_vec_f64());
}

#[test]
fn embedding_lookup_and_topk_match_the_cpu() {
    let table = f32_cpu(&[6, 4], 13);
    let idx = Tensor::from_vec(vec![5i64, 0, 5, 2], &[4]).unwrap();
    let got = on_gpu(&table)
        .index_select(0, &idx.to_device(GPU).unwrap())
        .unwrap();
    check(
        &got,
        &table.index_select(0, &idx).unwrap(),
        0.0,
        "index_select",
    );
    // gather / scatter_add along the last dim (MoE gate values and their gradient).
    let x = f32_cpu(&[2, 3, 6], 32);
    let picks = Tensor::from_vec(vec![5i64, 0, 2, 2, 1, 3, 4, 4, 0, 1, 5, 3], &[2, 3, 2]).unwrap();
    let gpicks = picks.to_device(GPU).unwrap();
    check(
        &on_gpu(&x).gather(2, &gpicks).unwrap(),
        &x.gather(2, &picks).unwrap(),
        0.0,
        "gather",
    );
    let src = f32_cpu(&[2, 3, 2], 33);
    check(
        &on_gpu(&x).scatter_add(2, &gpicks, &on_gpu(&src)).unwrap(),
        &x.scatter_add(2, &picks, &src).unwrap(),
        1e-6,
        "scatter_add",
    );
    let scores = f32_cpu(&[5, 8], 14);
    for dim in [0, 1] {
        let (v, i) = scores.topk(3, dim, true).unwrap();
        let (gv, gi) = on_gpu(&scores).topk(3, dim, true).unwrap();
        check(&gv, &v, 0.0, "topk values");
        assert_eq!(
            gi.to_device(Device::Cpu).unwrap().to_vec::<i64>().unwrap(),
            i.to_vec::<i64>().unwrap()
        );
    }
}

#[test]
fn grouped_matmul_is_one_tensor_core_launch_or_the_exact_loop() {
    let sizes = GroupSizes::host(&[9, 0, 20, 3]);
    // The same sizes left on a device, as the MoE dispatch leaves them: the exact loop reads
    // them back, the tensor-core launches build their schedule from them there.
    ditmoe_cuda::registry::device_or_emulator(0);
    let counts = Tensor::from_vec(vec![9i64, 0, 20, 3], &[4]).unwrap();
    let on_device = |device: Device| GroupSizes::on_device(counts.to_device(device).unwrap(), 32);
    let x = f32_cpu(&[32, 16], 50);
    let w: Vec<Tensor> = (0..4).map(|s| f32_cpu(&[24, 16], 51 + s)).collect();
    let stacked = Tensor::stack(&w.iter().collect::<Vec<_>>(), 0).unwrap(); // [4, 24, 16]
    for transpose in [true, false] {
        // [groups, out, in] for x·Wᵀ, else [groups, in, out].
        let weights = if transpose {
            stacked.clone()
        } else {
            stacked.transpose(1, 2).unwrap().contiguous()
        };
        let expected = Tensor::grouped_matmul(&x, &sizes, &weights, transpose).unwrap();
        // Exact f32: the per-group loop.
        for sizes in [sizes.clone(), on_device(GPU)] {
            let _exact = exact_products();
            let got =
                Tensor::grouped_matmul(&on_gpu(&x), &sizes, &on_gpu(&weights), transpose).unwrap();
            check(&got, &expected, 1e-5, "grouped, exact");
        }
        // Mixed precision: one grouped launch; equal to the product of rounded operands.
        let got =
            Tensor::grouped_matmul(&on_gpu(&x), &sizes, &on_gpu(&weights), transpose).unwrap();
        let with_device_sizes =
            Tensor::grouped_matmul(&on_gpu(&x), &on_device(GPU), &on_gpu(&weights), transpose)
                .unwrap();
        let expected =
            Tensor::grouped_matmul(&round(&x), &sizes, &round(&weights), transpose).unwrap();
        for got in [got, with_device_sizes] {
            assert_eq!(got.device(), GPU);
            assert_close(
                &got.to_vec_f64(),
                &expected.to_vec_f64(),
                1e-5,
                "grouped, bf16 tensor cores",
            );
        }
    }
    // The weight gradients: one depth-grouped launch in mixed precision, the exact loop in f32.
    let dy = f32_cpu(&[32, 24], 56);
    let grads = |dy: &Tensor, x: &Tensor, sizes: &GroupSizes| {
        per_group(&Tensor::grouped_weight_grads(dy, x, sizes).unwrap())
    };
    let expected = grads(&dy, &x, &sizes);
    let exact = {
        let _exact = exact_products();
        grads(&on_gpu(&dy), &on_gpu(&x), &sizes)
    };
    let mixed = grads(&on_gpu(&dy), &on_gpu(&x), &sizes);
    let mixed_device_sizes = grads(&on_gpu(&dy), &on_gpu(&x), &on_device(GPU));
    let rounded = grads(&round(&dy), &round(&x), &sizes);
    for g in 0..sizes.len() {
        check(&exact[g], &expected[g], 1e-5, "grouped dW, exact");
        for mixed in [&mixed[g], &mixed_device_sizes[g]] {
            assert_eq!(mixed.device(), GPU);
            assert_close(
                &mixed.to_vec_f64(),
                &rounded[g].to_vec_f64(),
                1e-5,
                "grouped dW, bf16",
            );
        }
    }
}

#[test]
fn flash_attention_runs_the_fused_kernel_in_mixed_precision() {
    let (q, k, v) = (
        f32_cpu(&[2, 3, 40, 32], 60),
        f32_cpu(&[2, 3, 40, 32], 61),
        f32_cpu(&[2, 3, 40, 32], 62),
    );
    let scale = 32f64.powf(-0.5);
    let (expected, expected_lse) = round(&q)
        .flash_attention(&round(&k), &round(&v), scale)
        .unwrap();
    let (out, lse) = on_gpu(&q)
        .flash_attention(&on_gpu(&k), &on_gpu(&v), scale)
        .unwrap();
    assert_eq!(out.device(), GPU);
    assert_close(
        &out.to_vec_f64(),
        &expected.to_vec_f64(),
        2e-2,
        "O (P in bf16)",
    );
    assert_close(
        &lse.to_vec_f64(),
        &expected_lse.to_vec_f64(),
        1e-4,
        "log-sum-exp",
    );
    // The backward, against the CPU gradients of the rounded inputs.
    let grad = f32_cpu(&[2, 3, 40, 32], 63);
    let cpu = round(&q)
        .flash_attention_backward(
            &round(&k),
            &round(&v),
            &expected,
            &expected_lse,
            &grad,
            scale,
        )
        .unwrap();
    let gpu = on_gpu(&q)
        .flash_attention_backward(&on_gpu(&k), &on_gpu(&v), &out, &lse, &on_gpu(&grad), scale)
        .unwrap();
    for (what, g, c) in [
        ("dq", &gpu.q, &cpu.q),
        ("dk", &gpu.k, &cpu.k),
        ("dv", &gpu.v, &cpu.v),
    ] {
        let (g, c) = (g.to_vec_f64(), c.to_vec_f64());
        let scale_of = c.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let worst = max_abs_difference(&g, &c);
        assert!(
            worst < 3e-2 * scale_of,
            "{what}: {worst} vs scale {scale_of}"
        );
    }
    assert!(on_gpu(&q).fused_attention_available());
    // In exact f32 the bf16 kernels are refused with the reason.
    let exact = exact_products();
    assert!(!on_gpu(&q).fused_attention_available());
    let err = on_gpu(&q)
        .flash_attention(&on_gpu(&k), &on_gpu(&v), scale)
        .unwrap_err();
    assert!(err.to_string().contains("mixed precision"), "{err}");
    drop(exact);
    // Head dim 20 (not a multiple of 8) has no kernel.
    assert!(!on_gpu(&f32_cpu(&[1, 8, 20], 64)).fused_attention_available());
}

#[test]
fn the_fused_adamw_step_matches_the_cpu() {
    let hyper = crate::ops::optim::AdamWHyper {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_scale: 0.5,
        step: 2,
    };
    let (p, g, m) = (
        f32_cpu(&[7, 9], 40),
        f32_cpu(&[7, 9], 41),
        f32_cpu(&[7, 9], 42),
    );
    let v = f32_cpu(&[7, 9], 43).abs().unwrap();
    let cpu = p.adamw_update(&g, &m, &v, &hyper).unwrap();
    let gpu = on_gpu(&p)
        .adamw_update(&on_gpu(&g), &on_gpu(&m), &on_gpu(&v), &hyper)
        .unwrap();
    check(&gpu.param, &cpu.param, 1e-6, "param");
    check(&gpu.m, &cpu.m, 1e-6, "m");
    check(&gpu.v, &cpu.v, 1e-6, "v");

    // The in-place step with an EMA: on the GPU composed from the same kernel and lerp.
    use crate::ops::optim::{AdamWMoments, ParamUpdate};
    let ema = f32_cpu(&[7, 9], 44);
    let step = |mut state: [Tensor; 5]| {
        let [p, g, m, v, e] = &mut state;
        let mut update = [ParamUpdate {
            param: p,
            adam: Some(AdamWMoments { grad: g, m, v }),
            ema: Some(e),
        }];
        Tensor::optimizer_step(&mut update, &hyper, 0.9).unwrap();
        state
    };
    let on_cpu = step([&p, &g, &m, &v, &ema].map(Tensor::clone));
    let on_device = step([&p, &g, &m, &v, &ema].map(on_gpu));
    for (what, (gpu, cpu)) in ["param", "grad", "m", "v", "ema"]
        .into_iter()
        .zip(on_device.iter().zip(&on_cpu))
    {
        check(gpu, cpu, 1e-6, what);
    }
}

#[test]
fn ops_without_a_cuda_kernel_and_mixed_devices_are_clear_errors() {
    let g = on_gpu(&f32_cpu(&[2, 3], 15));
    let err = g.argsort(1, false).unwrap_err();
    assert!(matches!(err, TensorError::NoCudaKernel { .. }), "{err}");
    assert!(err.to_string().contains("to_device(Device::Cpu)"), "{err}");
    let cpu = f32_cpu(&[2, 3], 16);
    let err = g.add(&cpu).unwrap_err();
    assert!(matches!(err, TensorError::DeviceMismatch { .. }), "{err}");
}

#[test]
fn zeros_are_memsets_and_contiguous_slices_are_views() {
    // Traffic is counted per thread, so these counts are this test's alone.
    use ditmoe_cuda::traffic;
    ditmoe_cuda::registry::device_or_emulator(0);
    let before = traffic::this_thread();
    let z = Tensor::zeros_on(&[3, 4], DType::F32, GPU).unwrap();
    let i = Tensor::zeros_on(&[5], DType::I64, GPU).unwrap();
    let used = traffic::this_thread() - before;
    assert_eq!(
        (used.uploads, used.allocations),
        (0, 2),
        "a memset, not an upload"
    );
    assert_eq!(z.device(), GPU);
    assert_eq!(z.to_vec_f64(), vec![0.0; 12]);
    assert_eq!(
        i.to_device(Device::Cpu).unwrap().to_vec::<i64>().unwrap(),
        vec![0; 5]
    );
    assert!(matches!(
        Tensor::zeros_on(&[2], DType::BF16, GPU),
        Err(TensorError::UnsupportedDType { .. })
    ));
    // A contiguous slice (rows 1..3 of a [3, 4]) goes to a kernel as a view: one launch, no copy.
    let x = f32_cpu(&[3, 4], 7);
    let rows = x.to_device(GPU).unwrap().narrow(0, 1, 2).unwrap();
    let before = traffic::this_thread();
    let y = rows.exp().unwrap();
    assert_eq!(
        (traffic::this_thread() - before).launches,
        1,
        "no copy of the slice"
    );
    assert_eq!(y.device(), GPU);
    let expected = x.narrow(0, 1, 2).unwrap().exp().unwrap().to_vec_f64();
    assert_close(&y.to_vec_f64(), &expected, 1e-5, "exp of a view");
}

#[test]
fn long_rows_are_reduced_in_chunks_with_the_same_result() {
    // 40960 = 10 chunks of 4096; 12000 = 3 chunks of 4000; 4099 is prime: one pass.
    for (shape, dims) in [
        (vec![40960], vec![]),
        (vec![3, 12000], vec![1]),
        (vec![2, 4099], vec![1]),
        (vec![8, 5120], vec![0, 1]),
    ] {
        let x = f32_cpu(&shape, 80);
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
            let got = on_gpu(&x).reduce(op, &dims, false).unwrap();
            let expected = x.reduce(op, &dims, false).unwrap();
            check(
                &got,
                &expected,
                1e-4,
                &format!("{op:?} over {dims:?} of {shape:?}"),
            );
        }
        // Over the leading dims (a bias gradient), read in place by the column kernel.
        if shape.len() > 1 {
            for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
                let got = on_gpu(&x).reduce(op, &[0], true).unwrap();
                let expected = x.reduce(op, &[0], true).unwrap();
                check(
                    &got,
                    &expected,
                    1e-4,
                    &format!("{op:?} over dim 0 of {shape:?}"),
                );
            }
        }
        // Two leading dims, given out of order (a bias gradient of [B, T, D]).
        let y = f32_cpu(&[4, 70, 24], 81);
        let got = on_gpu(&y).reduce(ReduceOp::Sum, &[1, 0], false).unwrap();
        check(
            &got,
            &y.sum(&[0, 1], false).unwrap(),
            1e-4,
            "sum over [1, 0]",
        );
        // A gradient's squared norm: chunks of squares, then their sum.
        let squares = x.mul(&x).unwrap().sum_all().unwrap();
        let got = on_gpu(&x).sum_of_squares().unwrap();
        assert_eq!(got.shape(), &[] as &[usize]);
        check(
            &got,
            &squares,
            1e-4,
            &format!("sum of squares of {shape:?}"),
        );
    }
}

#[test]
fn moe_dispatch_on_the_device_matches_the_cpu() {
    use rand::Rng;
    ditmoe_cuda::registry::device_or_emulator(0);
    let mut rng = crate::seeded_rng(90);
    let (tokens, k, experts) = (70, 2, 6);
    let picks: Vec<i64> = (0..tokens * k)
        .map(|_| rng.random_range(0..experts as i64))
        .collect();
    let picks = Tensor::from_vec(picks, &[tokens, k]).unwrap();
    let ec_picks: Vec<i64> = (0..2 * 5 * experts)
        .map(|_| rng.random_range(0..35))
        .collect();
    let ec_picks = Tensor::from_vec(ec_picks, &[2, 5, experts]).unwrap();
    // Scores on a coarse grid, so expert race's cut falls among ties.
    let scores: Vec<f32> = (0..tokens * experts)
        .map(|_| rng.random_range(0..8) as f32 / 8.0)
        .collect();
    let scores = Tensor::from_vec(scores, &[tokens, experts]).unwrap();
    let as_ints = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_vec::<i64>().unwrap();
    for (cpu_positions, gpu_positions) in [
        (
            Tensor::token_choice_positions(&picks, experts).unwrap(),
            Tensor::token_choice_positions(&picks.to_device(GPU).unwrap(), experts).unwrap(),
        ),
        (
            Tensor::expert_choice_positions(&ec_picks, 35).unwrap(),
            Tensor::expert_choice_positions(&ec_picks.to_device(GPU).unwrap(), 35).unwrap(),
        ),
        (
            Tensor::expert_race_positions(&scores, tokens * k).unwrap(),
            Tensor::expert_race_positions(&scores.to_device(GPU).unwrap(), tokens * k).unwrap(),
        ),
    ] {
        assert_eq!(gpu_positions.device(), GPU);
        assert_eq!(as_ints(&gpu_positions), as_ints(&cpu_positions));
        let (on_cpu, on_gpu) = (
            Tensor::dispatch_order(&cpu_positions, experts).unwrap(),
            Tensor::dispatch_order(&gpu_positions, experts).unwrap(),
        );
        assert!(on_gpu.group_sizes.device_counts().is_some());
        assert_eq!(
            on_gpu.group_sizes.to_host().unwrap(),
            on_cpu.group_sizes.to_host().unwrap()
        );
        for (g, c) in [
            (&on_gpu.order, &on_cpu.order),
            (&on_gpu.token_of, &on_cpu.token_of),
            (&on_gpu.expert_of, &on_cpu.expert_of),
        ] {
            assert_eq!(g.device(), GPU);
            assert_eq!(as_ints(g), as_ints(c));
        }
    }
}
