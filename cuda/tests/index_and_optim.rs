//! `kernels/index.ptx` and `kernels/optim.ptx` against CPU references on random inputs.

mod common;

use common::{assert_close, gpus, random, values};
use ditmoe_cuda::ops::index;
use ditmoe_cuda::ops::optim::{adamw, AdamWStep};
use ditmoe_tensor::Tensor;
use rand::{Rng, SeedableRng};

fn random_indices(len: usize, bound: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.random_range(0..bound as u32))
        .collect()
}

fn index_tensor(idx: &[u32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), shape).unwrap()
}

#[test]
fn row_selection_and_its_scatter_add_match_the_cpu() {
    let (rows, cols, count) = (11, 37, 30); // repeated indices: the scatter must add them all
    for gpu in gpus() {
        let table = random(rows * cols, -1.0, 1.0, 1);
        let src = random(count * cols, -1.0, 1.0, 2);
        let idx = random_indices(count, rows, 3);
        let tt = Tensor::from_slice(&table, &[rows, cols]).unwrap();
        let it = index_tensor(&idx, &[count]);
        let (td, id) = (gpu.upload(&table).unwrap(), gpu.upload(&idx).unwrap());
        let got = index::index_select_rows(&gpu, &td, &id, rows, cols).unwrap();
        assert_close(
            &gpu.download(&got).unwrap(),
            &values(&tt.index_select(0, &it).unwrap()),
            0.0,
            "index_select",
        );
        index::index_add_rows(&gpu, &td, &id, &gpu.upload(&src).unwrap(), rows, cols).unwrap();
        let st = Tensor::from_slice(&src, &[count, cols]).unwrap();
        let expected = tt.index_add(0, &it, &st).unwrap();
        assert_close(
            &gpu.download(&td).unwrap(),
            &values(&expected),
            1e-6,
            "index_add",
        );
    }
}

#[test]
fn out_of_range_indices_give_nan_or_are_skipped_never_a_stray_access() {
    let gpu = ditmoe_cuda::Gpu::emulator();
    let table = gpu.upload(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let idx = gpu.upload(&[1u32, 7]).unwrap();
    let got = gpu
        .download(&index::index_select_rows(&gpu, &table, &idx, 2, 2).unwrap())
        .unwrap();
    assert_eq!(&got[..2], &[3.0, 4.0]);
    assert!(got[2].is_nan() && got[3].is_nan());
    let src = gpu.upload(&[1.0f32; 4]).unwrap();
    index::index_add_rows(&gpu, &table, &idx, &src, 2, 2).unwrap();
    assert_eq!(gpu.download(&table).unwrap(), vec![1.0, 2.0, 4.0, 5.0]);
}

#[test]
fn gather_and_scatter_add_along_the_last_dim_match_the_cpu() {
    let (rows, cols, k) = (9, 13, 4);
    for gpu in gpus() {
        let x = random(rows * cols, -1.0, 1.0, 10);
        let src = random(rows * k, -1.0, 1.0, 11);
        let idx = random_indices(rows * k, cols, 12);
        let xt = Tensor::from_slice(&x, &[rows, cols]).unwrap();
        let it = index_tensor(&idx, &[rows, k]);
        let (xd, id) = (gpu.upload(&x).unwrap(), gpu.upload(&idx).unwrap());
        let got = index::gather_cols(&gpu, &xd, &id, rows, cols).unwrap();
        assert_close(
            &gpu.download(&got).unwrap(),
            &values(&xt.gather(1, &it).unwrap()),
            0.0,
            "gather",
        );
        index::scatter_add_cols(&gpu, &xd, &id, &gpu.upload(&src).unwrap(), rows, cols).unwrap();
        let st = Tensor::from_slice(&src, &[rows, k]).unwrap();
        assert_close(
            &gpu.download(&xd).unwrap(),
            &values(&xt.scatter_add(1, &it, &st).unwrap()),
            1e-6,
            "scatter_add",
        );
    }
}

#[test]
fn topk_matches_the_cpu_including_ties() {
    for gpu in gpus() {
        for (s, (rows, cols, k)) in [(5, 8, 2), (12, 70, 5), (3, 3, 3)].into_iter().enumerate() {
            // Values on a coarse grid so rows contain ties.
            let x: Vec<f32> = random(rows * cols, -2.0, 2.0, 20 + s as u64)
                .into_iter()
                .map(|v| (v * 2.0).round() / 2.0)
                .collect();
            let xt = Tensor::from_slice(&x, &[rows, cols]).unwrap();
            let (values_cpu, indices_cpu) = xt.topk(k, 1, true).unwrap();
            let (v, i) = index::topk_rows(&gpu, &gpu.upload(&x).unwrap(), rows, cols, k).unwrap();
            assert_close(
                &gpu.download(&v).unwrap(),
                &values(&values_cpu),
                0.0,
                "topk values",
            );
            let got: Vec<i64> = gpu
                .download(&i)
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect();
            assert_eq!(
                got,
                indices_cpu.to_vec::<i64>().unwrap(),
                "topk indices {rows}x{cols} k={k}"
            );
        }
        let x = gpu.upload(&[0.0f32; 6]).unwrap();
        assert!(index::topk_rows(&gpu, &x, 2, 3, 4).is_err());
    }
}

#[test]
fn adamw_matches_the_reference_update_over_several_steps() {
    let n = 300;
    let hyper = |step| AdamWStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_scale: 0.5,
        step,
    };
    for gpu in gpus() {
        let mut p: Vec<f64> = random(n, -1.0, 1.0, 30)
            .into_iter()
            .map(f64::from)
            .collect();
        let (mut m, mut v) = (vec![0.0f64; n], vec![0.0f64; n]);
        let mut pd = gpu
            .upload(&p.iter().map(|&x| x as f32).collect::<Vec<_>>())
            .unwrap();
        let (mut md, mut vd) = (gpu.zeros::<f32>(n).unwrap(), gpu.zeros::<f32>(n).unwrap());
        for step in 1..=3u32 {
            let g = random(n, -1.0, 1.0, 40 + step as u64);
            let next = adamw(&gpu, &hyper(step), &pd, &gpu.upload(&g).unwrap(), &md, &vd).unwrap();
            (pd, md, vd) = (next.param, next.m, next.v);
            // The update of ditmoe_nn::optim::AdamW::step, in f64.
            let h = hyper(step);
            let (b1, b2) = (h.beta1 as f64, h.beta2 as f64);
            let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
            for j in 0..n {
                let gj = g[j] as f64 * h.grad_scale as f64;
                m[j] = b1 * m[j] + (1.0 - b1) * gj;
                v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                let update = (m[j] / c1) / ((v[j] / c2).sqrt() + h.eps as f64);
                let lr = h.lr as f64;
                p[j] = p[j] * (1.0 - lr * h.weight_decay as f64) - lr * update;
            }
        }
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        assert_close(&gpu.download(&pd).unwrap(), &f32s(&p), 1e-5, "params");
        assert_close(&gpu.download(&md).unwrap(), &f32s(&m), 1e-5, "m");
        assert_close(&gpu.download(&vd).unwrap(), &f32s(&v), 1e-5, "v");
    }
}
