//! `kernels/rows.ptx` and `kernels/norm.ptx` against the CPU tensor ops on random inputs.

mod common;

use common::{assert_close, gpus, random, values};
use ditmoe_cuda::ops::norm;
use ditmoe_cuda::ops::rows;
use ditmoe_cuda::ReduceOp;
use ditmoe_tensor::Tensor;

/// Shapes with fewer columns than a warp, a partial last block of rows, and long rows.
const SHAPES: [(usize, usize); 3] = [(3, 5), (13, 40), (9, 130)];

#[test]
fn column_reductions_match_the_cpu() {
    // One chunk of rows, several (a second pass), and a partial block of columns.
    for gpu in gpus() {
        for (s, (rows, cols)) in [(5, 3), (200, 40), (70, 300)].into_iter().enumerate() {
            let x = random(rows * cols, -3.0, 3.0, 50 + s as u64);
            let xt = Tensor::from_slice(&x, &[rows, cols]).unwrap();
            let xd = gpu.upload(&x).unwrap();
            for (op, expected) in [
                (ReduceOp::Sum, xt.sum(&[0], false).unwrap()),
                (ReduceOp::Max, xt.max(&[0], false).unwrap()),
                (ReduceOp::Mean, xt.mean(&[0], false).unwrap()),
            ] {
                let got = gpu
                    .download(&rows::reduce_columns(&gpu, op, &xd, rows, cols).unwrap())
                    .unwrap();
                assert_close(
                    &got,
                    &values(&expected),
                    1e-5,
                    &format!("{op:?} over the rows of {rows}x{cols} on {}", gpu.name()),
                );
            }
        }
        let x = gpu.upload(&[1.0f32; 6]).unwrap();
        assert!(rows::reduce_columns(&gpu, ReduceOp::SumOfSquares, &x, 2, 3).is_err());
        assert!(rows::reduce_columns(&gpu, ReduceOp::Sum, &x, 4, 3).is_err());
    }
}

#[test]
fn row_reductions_match_the_cpu() {
    for gpu in gpus() {
        for (s, (rows, cols)) in SHAPES.into_iter().enumerate() {
            let x = random(rows * cols, -3.0, 3.0, s as u64);
            let xt = Tensor::from_slice(&x, &[rows, cols]).unwrap();
            let xd = gpu.upload(&x).unwrap();
            for (op, expected) in [
                (ReduceOp::Sum, xt.sum(&[1], false).unwrap()),
                (ReduceOp::Max, xt.max(&[1], false).unwrap()),
                (ReduceOp::Mean, xt.mean(&[1], false).unwrap()),
                (
                    ReduceOp::SumOfSquares,
                    xt.mul(&xt).unwrap().sum(&[1], false).unwrap(),
                ),
            ] {
                let got = gpu
                    .download(&rows::reduce_rows(&gpu, op, &xd, rows, cols).unwrap())
                    .unwrap();
                assert_close(
                    &got,
                    &values(&expected),
                    1e-5,
                    &format!("{op:?} {rows}x{cols}"),
                );
            }
        }
    }
}

#[test]
fn softmax_and_its_backward_match_the_cpu() {
    for gpu in gpus() {
        for (s, (rows, cols)) in SHAPES.into_iter().enumerate() {
            let x = random(rows * cols, -8.0, 8.0, 10 + s as u64);
            let dy = random(rows * cols, -1.0, 1.0, 20 + s as u64);
            let xt = Tensor::from_slice(&x, &[rows, cols]).unwrap();
            let y = xt.softmax(1).unwrap();
            let y_gpu = rows::softmax_rows(&gpu, &gpu.upload(&x).unwrap(), rows, cols).unwrap();
            assert_close(&gpu.download(&y_gpu).unwrap(), &values(&y), 1e-5, "softmax");
            // Reference backward: dx = y * (dy - sum(dy * y)).
            let dyt = Tensor::from_slice(&dy, &[rows, cols]).unwrap();
            let dot = dyt.mul(&y).unwrap().sum(&[1], true).unwrap();
            let expected = y.mul(&dyt.sub(&dot).unwrap()).unwrap();
            let dx =
                rows::softmax_backward_rows(&gpu, &y_gpu, &gpu.upload(&dy).unwrap(), rows, cols)
                    .unwrap();
            assert_close(
                &gpu.download(&dx).unwrap(),
                &values(&expected),
                1e-5,
                "softmax backward",
            );
        }
    }
}

#[test]
fn layer_norm_forward_and_backward_match_the_cpu_with_and_without_affine() {
    for gpu in gpus() {
        for (s, (rows, cols)) in SHAPES.into_iter().enumerate() {
            let seed = 30 + 10 * s as u64;
            let x = random(rows * cols, -2.0, 3.0, seed);
            let w = random(cols, 0.5, 1.5, seed + 1);
            let b = random(cols, -1.0, 1.0, seed + 2);
            let dy = random(rows * cols, -1.0, 1.0, seed + 3);
            let xt = Tensor::from_slice(&x, &[rows, cols]).unwrap();
            let wt = Tensor::from_slice(&w, &[cols]).unwrap();
            let bt = Tensor::from_slice(&b, &[cols]).unwrap();
            let dyt = Tensor::from_slice(&dy, &[rows, cols]).unwrap();
            let (xd, wd, bd, dyd) = (
                gpu.upload(&x).unwrap(),
                gpu.upload(&w).unwrap(),
                gpu.upload(&b).unwrap(),
                gpu.upload(&dy).unwrap(),
            );
            for affine in [false, true] {
                let (cw, cb) = if affine {
                    (Some(&wt), Some(&bt))
                } else {
                    (None, None)
                };
                let (gw, gb) = if affine {
                    (Some(&wd), Some(&bd))
                } else {
                    (None, None)
                };
                let (expected, stats) = xt.layer_norm_with_stats(cw, cb, 1e-6).unwrap();
                let out = norm::layer_norm(&gpu, &xd, gw, gb, rows, cols, 1e-6).unwrap();
                let what = format!("layer_norm {rows}x{cols} affine={affine}");
                assert_close(
                    &gpu.download(&out.output).unwrap(),
                    &values(&expected),
                    1e-4,
                    &what,
                );
                assert_close(
                    &gpu.download(&out.mean).unwrap(),
                    &values(&stats.mean),
                    1e-5,
                    &what,
                );
                assert_close(
                    &gpu.download(&out.rstd).unwrap(),
                    &values(&stats.rstd),
                    1e-4,
                    &what,
                );

                let grads = xt.layer_norm_backward(&stats, cw, affine, &dyt).unwrap();
                let got = norm::layer_norm_backward(
                    &gpu,
                    &xd,
                    norm::LayerNormStats {
                        mean: &out.mean,
                        rstd: &out.rstd,
                    },
                    gw,
                    affine,
                    &dyd,
                    rows,
                    cols,
                )
                .unwrap();
                assert_close(
                    &gpu.download(&got.input).unwrap(),
                    &values(&grads.input),
                    1e-4,
                    &what,
                );
                assert_eq!(got.weight.is_some(), affine);
                if affine {
                    let dw = gpu.download(got.weight.as_ref().unwrap()).unwrap();
                    assert_close(&dw, &values(grads.weight.as_ref().unwrap()), 1e-4, &what);
                    let db = gpu.download(got.bias.as_ref().unwrap()).unwrap();
                    assert_close(&db, &values(grads.bias.as_ref().unwrap()), 1e-4, &what);
                }
            }
        }
    }
}

#[test]
fn modulate_and_its_backward_match_the_composed_cpu_ops() {
    let (batch, tokens, dim) = (3, 5, 37);
    for gpu in gpus() {
        let x = random(batch * tokens * dim, -2.0, 2.0, 70);
        let shift = random(batch * dim, -1.0, 1.0, 71);
        let scale = random(batch * dim, -1.0, 1.0, 72);
        let dy = random(batch * tokens * dim, -1.0, 1.0, 73);
        let xt = Tensor::from_slice(&x, &[batch, tokens, dim]).unwrap();
        let shift_t = Tensor::from_slice(&shift, &[batch, 1, dim]).unwrap();
        let scale_t = Tensor::from_slice(&scale, &[batch, 1, dim]).unwrap();
        let dyt = Tensor::from_slice(&dy, &[batch, tokens, dim]).unwrap();
        let one_plus = scale_t.add_scalar(1.0).unwrap();
        let expected = xt.mul(&one_plus).unwrap().add(&shift_t).unwrap();
        let (xd, shd, scd, dyd) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&shift).unwrap(),
            gpu.upload(&scale).unwrap(),
            gpu.upload(&dy).unwrap(),
        );
        let out = norm::modulate(&gpu, &xd, &shd, &scd, batch, tokens, dim).unwrap();
        assert_close(
            &gpu.download(&out).unwrap(),
            &values(&expected),
            1e-6,
            "modulate",
        );
        let (dx, dshift, dscale) =
            norm::modulate_backward(&gpu, &xd, &scd, &dyd, batch, tokens, dim).unwrap();
        let expected_dx = dyt.mul(&one_plus).unwrap();
        let expected_dshift = dyt.sum(&[1], false).unwrap();
        let expected_dscale = dyt.mul(&xt).unwrap().sum(&[1], false).unwrap();
        assert_close(
            &gpu.download(&dx).unwrap(),
            &values(&expected_dx),
            1e-6,
            "dx",
        );
        assert_close(
            &gpu.download(&dshift).unwrap(),
            &values(&expected_dshift),
            1e-5,
            "dshift",
        );
        assert_close(
            &gpu.download(&dscale).unwrap(),
            &values(&expected_dscale),
            1e-5,
            "dscale",
        );
    }
}

#[test]
fn wrong_lengths_are_refused_naming_the_operand() {
    let gpu = ditmoe_cuda::Gpu::emulator();
    let x = gpu.upload(&[0.0f32; 10]).unwrap();
    let err = rows::softmax_rows(&gpu, &x, 3, 4).unwrap_err().to_string();
    assert!(
        err.contains("softmax input: expected 12 elements, found 10"),
        "{err}"
    );
    let w = gpu.upload(&[1.0f32; 3]).unwrap();
    let err = norm::layer_norm(&gpu, &x, Some(&w), None, 2, 5, 1e-5)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("layer_norm weight"), "{err}");
}
