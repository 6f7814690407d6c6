//! `kernels/elementwise.ptx` against the CPU tensor ops on random inputs.

mod common;

use common::{assert_close, gpus, random, values};
use ditmoe_cuda::ops::elementwise::{self as ew, Broadcast};
use ditmoe_cuda::{kernel_timing, traffic, BinaryOp, UnaryOp};
use ditmoe_tensor::Tensor;

const UNARY: [(UnaryOp, f32, f32); 16] = [
    (UnaryOp::Neg, -3.0, 3.0),
    (UnaryOp::Exp, -3.0, 3.0),
    (UnaryOp::Log, 0.1, 5.0),
    (UnaryOp::Sqrt, 0.1, 5.0),
    (UnaryOp::Rsqrt, 0.1, 5.0),
    (UnaryOp::Tanh, -3.0, 3.0),
    (UnaryOp::Sigmoid, -6.0, 6.0),
    (UnaryOp::Relu, -3.0, 3.0),
    (UnaryOp::Silu, -6.0, 6.0),
    (UnaryOp::GeluTanh, -4.0, 4.0),
    (UnaryOp::Sin, -3.0, 3.0),
    (UnaryOp::Cos, -3.0, 3.0),
    (UnaryOp::Abs, -3.0, 3.0),
    (UnaryOp::Powf(3.0), -2.0, 2.0),
    (UnaryOp::AddScalar(0.5), -3.0, 3.0),
    (UnaryOp::MulScalar(-1.5), -3.0, 3.0),
];

#[test]
fn unary_functions_and_derivatives_match_the_cpu() {
    for gpu in gpus() {
        // 300 elements: more than one block, and a partial last block.
        let n = 300;
        for (i, (op, lo, hi)) in UNARY.into_iter().enumerate() {
            let x = random(n, lo, hi, i as u64);
            let g = random(n, -1.0, 1.0, 100 + i as u64);
            let xt = Tensor::from_slice(&x, &[n]).unwrap();
            let gt = Tensor::from_slice(&g, &[n]).unwrap();
            let xd = gpu.upload(&x).unwrap();
            let gd = gpu.upload(&g).unwrap();
            let forward = gpu.download(&ew::unary(&gpu, op, &xd).unwrap()).unwrap();
            let expected = values(&xt.unary(op).unwrap());
            // ex2/lg2/tanh/sin .approx are accurate to ~2^-21 relative on the GPU.
            assert_close(
                &forward,
                &expected,
                1e-4,
                &format!("{op:?} on {}", gpu.name()),
            );
            let backward = gpu
                .download(&ew::unary_backward(&gpu, op, &xd, &gd).unwrap())
                .unwrap();
            let expected = values(&xt.unary_backward(op, &gt).unwrap());
            assert_close(
                &backward,
                &expected,
                1e-4,
                &format!("{op:?}' on {}", gpu.name()),
            );
        }
    }
}

#[test]
fn lerp_matches_the_cpu() {
    for gpu in gpus() {
        let n = 300;
        let (a, b) = (random(n, -2.0, 2.0, 11), random(n, -2.0, 2.0, 12));
        let (at, bt) = (
            Tensor::from_slice(&a, &[n]).unwrap(),
            Tensor::from_slice(&b, &[n]).unwrap(),
        );
        let (ad, bd) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
        let got = gpu
            .download(&ew::lerp(&gpu, &ad, &bd, 0.1).unwrap())
            .unwrap();
        assert_close(&got, &values(&at.lerp(&bt, 0.1).unwrap()), 1e-6, gpu.name());
        assert!(ew::lerp(&gpu, &ad, &gpu.upload(&b[..10]).unwrap(), 0.1).is_err());
    }
}

#[test]
fn sin_and_cos_of_large_arguments_stay_accurate() {
    // The sinusoidal timestep embedding takes t·f up to 1000 radians, far outside the
    // [-pi, pi] where the hardware's sin/cos.approx are accurate.
    for gpu in gpus() {
        let x = random(300, -1000.0, 1000.0, 7);
        let xt = Tensor::from_slice(&x, &[300]).unwrap();
        let xd = gpu.upload(&x).unwrap();
        for op in [UnaryOp::Sin, UnaryOp::Cos] {
            let got = gpu.download(&ew::unary(&gpu, op, &xd).unwrap()).unwrap();
            let expected = values(&xt.unary(op).unwrap());
            // Absolute error: x itself carries ~6e-5 of rounding at 1000.
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (g - e).abs() < 2e-4,
                    "{op:?}({}) on {}: got {g}, expected {e}",
                    x[i],
                    gpu.name()
                );
            }
        }
    }
}

#[test]
fn pow_of_negative_bases_follows_powf() {
    for gpu in gpus() {
        let x = vec![-2.0f32, -0.5, 0.0, 1.5];
        let xd = gpu.upload(&x).unwrap();
        for p in [2.0f32, 3.0, 0.5] {
            let got = gpu
                .download(&ew::unary(&gpu, UnaryOp::Powf(f64::from(p)), &xd).unwrap())
                .unwrap();
            let expected: Vec<f32> = x.iter().map(|v| v.powf(p)).collect();
            // NaN exactly where powf gives one (x^0.5 of a negative base), close elsewhere.
            let is_nan = |v: &[f32]| v.iter().map(|x| x.is_nan()).collect::<Vec<_>>();
            assert_eq!(is_nan(&got), is_nan(&expected), "x^{p}: where the NaNs are");
            let numbers = |v: &[f32]| {
                v.iter()
                    .copied()
                    .filter(|x| !x.is_nan())
                    .collect::<Vec<_>>()
            };
            assert_close(&numbers(&got), &numbers(&expected), 1e-5, &format!("x^{p}"));
        }
    }
}

#[test]
fn binary_ops_broadcast_like_the_cpu() {
    let ops = BinaryOp::EVERY;
    let shapes: [(&[usize], &[usize]); 4] = [
        (&[5, 7], &[5, 7]),
        (&[2, 3, 8], &[8]),
        (&[4, 1, 6], &[3, 1]),
        (&[1], &[3, 5]),
    ];
    for gpu in gpus() {
        for (s, (a_shape, b_shape)) in shapes.iter().enumerate() {
            let na: usize = a_shape.iter().product();
            let nb: usize = b_shape.iter().product();
            // Rounded to quarters so that == and the comparisons see ties.
            let round = |v: Vec<f32>| v.into_iter().map(|x| (x * 4.0).round() / 4.0).collect();
            let a: Vec<f32> = round(random(na, -2.0, 2.0, s as u64));
            let mut b: Vec<f32> = round(random(nb, -2.0, 2.0, 50 + s as u64));
            b.iter_mut().filter(|v| **v == 0.0).for_each(|v| *v = 0.25);
            let at = Tensor::from_slice(&a, a_shape).unwrap();
            let bt = Tensor::from_slice(&b, b_shape).unwrap();
            let (ad, bd) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
            let layout = Broadcast::of(a_shape, b_shape).unwrap();
            for op in ops {
                let got = gpu
                    .download(&ew::binary(&gpu, op, &ad, &bd, &layout).unwrap())
                    .unwrap();
                let expected = at.binary(op, &bt).unwrap();
                assert_eq!(expected.shape(), &layout.shape[..]);
                assert_close(
                    &got,
                    &values(&expected),
                    1e-6,
                    &format!("{op:?} {a_shape:?} {b_shape:?}"),
                );
            }
        }
    }
}

#[test]
fn binary_refuses_operands_its_strides_would_overrun() {
    let gpu = ditmoe_cuda::Gpu::emulator();
    let a = gpu.upload(&[1.0f32; 6]).unwrap();
    let b = gpu.upload(&[1.0f32; 2]).unwrap();
    let layout = Broadcast::of(&[2, 3], &[3]).unwrap();
    let err = ew::binary(&gpu, BinaryOp::Add, &a, &b, &layout).unwrap_err();
    assert!(err.to_string().contains("holds 2"), "{err}");
}

#[test]
fn strided_views_are_read_in_place_and_copied_contiguous() {
    for gpu in gpus() {
        // x: [4, 6]; the view is the transposed middle block x[1..3, 1..5]^T: shape [4, 2].
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let xt = Tensor::from_slice(&x, &[4, 6]).unwrap();
        let view = xt
            .narrow(0, 1, 2)
            .unwrap()
            .narrow(1, 1, 4)
            .unwrap()
            .t()
            .unwrap();
        let (shape, strides, offset) = (
            view.shape().to_vec(),
            view.layout().strides().to_vec(),
            view.layout().offset(),
        );
        let xd = gpu.upload(&x).unwrap();
        let copied = ew::copy_strided(&gpu, &xd, &shape, &strides, offset).unwrap();
        assert_eq!(gpu.download(&copied).unwrap(), values(&view.contiguous()));
        // The same view as an operand of a broadcasting add with a row of 2.
        let row = [10.0f32, 20.0];
        let layout = Broadcast {
            shape: shape.clone(),
            a_strides: strides.clone(),
            b_strides: vec![0, 1],
            a_offset: offset,
            b_offset: 0,
        };
        let sum = ew::binary(
            &gpu,
            BinaryOp::Add,
            &xd,
            &gpu.upload(&row).unwrap(),
            &layout,
        )
        .unwrap();
        let expected = view.add(&Tensor::from_slice(&row, &[2]).unwrap()).unwrap();
        assert_eq!(gpu.download(&sum).unwrap(), values(&expected));
        let err = ew::copy_strided(&gpu, &xd, &[4, 2], &[1, 21], 0).unwrap_err();
        assert!(err.to_string().contains("reach element 24"), "{err}");
    }
}

#[test]
fn casts_round_to_nearest_even_and_back() {
    for gpu in gpus() {
        let x = random(200, -100.0, 100.0, 9);
        let bf = ew::to_bf16(&gpu, &gpu.upload(&x).unwrap()).unwrap();
        let got: Vec<half::bf16> = gpu.download(&bf).unwrap();
        let expected: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
        assert_eq!(got, expected);
        let back = gpu.download(&ew::to_f32(&gpu, &bf).unwrap()).unwrap();
        let expected: Vec<f32> = expected.iter().map(|v| v.to_f32()).collect();
        assert_eq!(back, expected);
    }
}

#[test]
fn traffic_and_kernel_times_count_what_was_asked() {
    for gpu in gpus() {
        let before = traffic::this_thread();
        let x = gpu.upload(&[1.0f32, 4.0, 9.0]).unwrap();
        kernel_timing::start();
        let y = ew::unary(&gpu, UnaryOp::Sqrt, &x).unwrap();
        let _ = ew::unary(&gpu, UnaryOp::Sqrt, &y).unwrap();
        assert_eq!(gpu.download(&y).unwrap(), vec![1.0, 2.0, 3.0]);
        let used = traffic::this_thread() - before;
        assert_eq!((used.uploads, used.launches, used.downloads), (1, 2, 1));
        let times = kernel_timing::times();
        assert_eq!(times.len(), 1, "{times:?}");
        assert_eq!(times.values().next().unwrap().launches, 2);
        kernel_timing::stop();
        let _ = ew::unary(&gpu, UnaryOp::Sqrt, &y).unwrap();
        assert!(kernel_timing::times().is_empty(), "timing stopped");
    }
}

#[test]
fn shape_tables_are_uploaded_once_per_distinct_table() {
    for gpu in gpus() {
        let a = gpu.upload(&random(12, -1.0, 1.0, 40)).unwrap();
        let b = gpu.upload(&random(4, -1.0, 1.0, 41)).unwrap();
        let layout = Broadcast::of(&[3, 4], &[4]).unwrap();
        let first = ew::binary(&gpu, BinaryOp::Add, &a, &b, &layout).unwrap();
        let before = traffic::this_thread();
        let second = ew::binary(&gpu, BinaryOp::Add, &a, &b, &layout).unwrap();
        assert_eq!(
            (traffic::this_thread() - before).uploads,
            0,
            "the table was reused"
        );
        assert_eq!(
            gpu.download(&first).unwrap(),
            gpu.download(&second).unwrap()
        );
        let other = Broadcast::of(&[4, 3], &[4, 1]).unwrap();
        let before = traffic::this_thread();
        let b12 = gpu.upload(&random(4, -1.0, 1.0, 42)).unwrap();
        ew::binary(&gpu, BinaryOp::Add, &a, &b12, &other).unwrap();
        assert_eq!(
            (traffic::this_thread() - before).uploads,
            2,
            "b, and a new table"
        );
    }
}

#[test]
fn swiglu_and_its_gradients_match_the_cpu() {
    use ditmoe_cuda::ops::swiglu::{swiglu, swiglu_backward};
    for gpu in gpus() {
        // 300 elements: more than one block, and a partial last block.
        let n = 300;
        let (g, u, dh) = (
            random(n, -6.0, 6.0, 1),
            random(n, -2.0, 2.0, 2),
            random(n, -1.0, 1.0, 3),
        );
        let tensor = |v: &[f32]| Tensor::from_slice(v, &[n]).unwrap();
        let (gt, ut, dht) = (tensor(&g), tensor(&u), tensor(&dh));
        let (gd, ud, dhd) = (
            gpu.upload(&g).unwrap(),
            gpu.upload(&u).unwrap(),
            gpu.upload(&dh).unwrap(),
        );
        let what = gpu.name();
        let forward = gpu.download(&swiglu(&gpu, &gd, &ud).unwrap()).unwrap();
        assert_close(&forward, &values(&gt.swiglu(&ut).unwrap()), 1e-4, what);
        let (dgate, dup) = swiglu_backward(&gpu, &gd, &ud, &dhd).unwrap();
        let (cpu_dgate, cpu_dup) = gt.swiglu_backward(&ut, &dht).unwrap();
        assert_close(
            &gpu.download(&dgate).unwrap(),
            &values(&cpu_dgate),
            1e-4,
            what,
        );
        assert_close(&gpu.download(&dup).unwrap(), &values(&cpu_dup), 1e-4, what);
        assert!(swiglu(&gpu, &gd, &gpu.upload(&u[..10]).unwrap()).is_err());
        assert!(swiglu_backward(&gpu, &gd, &ud, &gpu.upload(&dh[..10]).unwrap()).is_err());
    }
}

#[test]
fn views_are_read_in_place_by_kernels_and_copies() {
    use ditmoe_cuda::Buffer;
    use std::sync::Arc;
    for gpu in gpus() {
        let values: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let parent = Arc::new(gpu.upload(&values).unwrap());
        let view = Arc::new(Buffer::view(&parent, 3, 4).unwrap());
        assert_eq!(gpu.download(&view).unwrap(), vec![3.0, 4.0, 5.0, 6.0]);
        // A kernel reads the window, not the start of the allocation.
        let negated = ew::unary(&gpu, UnaryOp::Neg, &view).unwrap();
        assert_eq!(
            gpu.download(&negated).unwrap(),
            vec![-3.0, -4.0, -5.0, -6.0]
        );
        // A view of a view adds the offsets.
        let inner = Buffer::view(&view, 1, 2).unwrap();
        assert_eq!(gpu.download(&inner).unwrap(), vec![4.0, 5.0]);
        let empty = Buffer::view(&parent, 10, 0).unwrap();
        assert!(gpu.download(&empty).unwrap().is_empty());
        assert!(Buffer::view(&parent, 8, 3).is_err());
        // The view keeps its parent's memory alive.
        drop(parent);
        assert_eq!(gpu.download(&view).unwrap(), vec![3.0, 4.0, 5.0, 6.0]);
    }
}
