//! The GEMM kernels against the CPU matmul, in every operand layout, batched, with alpha/beta
//! and with shapes that leave partial tiles on every edge.

mod common;

use common::{assert_close, bf16_exact, gpus, random, to_bf16, values};
use ditmoe_cuda::ops::gemm::{gemm_bf16, gemm_f32, Gemm, GemmTile, Groups};
use ditmoe_cuda::{precision, Buffer};
use ditmoe_tensor::{DType, Tensor};
use half::bf16;

/// The CPU reference: alpha · op(A) · op(B) + beta · C in f64.
fn reference(spec: &Gemm, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    let Gemm { batch, m, n, k, .. } = *spec;
    let a_shape = if spec.a_transposed {
        [batch, k, m]
    } else {
        [batch, m, k]
    };
    let b_shape = if spec.b_transposed {
        [batch, n, k]
    } else {
        [batch, k, n]
    };
    let f64s = |v: &[f32], shape: &[usize]| {
        Tensor::from_slice(v, shape)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    };
    let mut at = f64s(a, &a_shape);
    let mut bt = f64s(b, &b_shape);
    if spec.a_transposed {
        at = at.transpose(1, 2).unwrap();
    }
    if spec.b_transposed {
        bt = bt.transpose(1, 2).unwrap();
    }
    let product = at
        .matmul(&bt)
        .unwrap()
        .mul_scalar(spec.alpha as f64)
        .unwrap();
    let ct = f64s(c, &[batch, m, n])
        .mul_scalar(spec.beta as f64)
        .unwrap();
    values(&product.add(&ct).unwrap())
}

fn specs() -> Vec<Gemm> {
    let mut specs = Vec::new();
    for (a_transposed, b_transposed) in [(false, false), (false, true), (true, false), (true, true)]
    {
        // Two tile rows (M = 136 > 128), a partial tile column, and K leaving a partial slice.
        specs.push(Gemm {
            a_transposed,
            b_transposed,
            ..Gemm::new(136, 72, 40)
        });
    }
    // An odd N (C's rows not 8-byte aligned: the scalar stores), with beta reading C.
    specs.push(Gemm {
        b_transposed: true,
        beta: 0.5,
        ..Gemm::new(40, 37, 24)
    });
    // More than one 256-column tile (the wide tile's), B in both layouts.
    for b_transposed in [false, true] {
        specs.push(Gemm {
            b_transposed,
            ..Gemm::new(24, 264, 16)
        });
    }
    // Batched, long K (7 slices: the 3-stage ring wraps twice), alpha and beta.
    specs.push(Gemm {
        batch: 2,
        alpha: 0.5,
        beta: -1.0,
        b_transposed: true,
        ..Gemm::new(24, 16, 224)
    });
    specs
}

#[test]
fn tensor_core_gemm_matches_the_cpu_in_every_layout() {
    for (gpu, tile) in gpus()
        .iter()
        .flat_map(|gpu| GemmTile::ALL.map(|tile| (gpu, tile)))
    {
        let _tile = precision::set(precision::current().with_gemm_tile(tile));
        for (s, spec) in specs().into_iter().enumerate() {
            let (sa, sb, sc) = (
                spec.batch * spec.m * spec.k,
                spec.batch * spec.k * spec.n,
                spec.batch * spec.m * spec.n,
            );
            // Inputs rounded to bf16 first, so the reference sees exactly what the GPU does.
            let a = bf16_exact(random(sa, -1.0, 1.0, 10 * s as u64));
            let b = bf16_exact(random(sb, -1.0, 1.0, 10 * s as u64 + 1));
            let c = random(sc, -1.0, 1.0, 10 * s as u64 + 2);
            let ad = gpu.upload(&to_bf16(&a)).unwrap();
            let bd = gpu.upload(&to_bf16(&b)).unwrap();
            let cd = gpu.upload(&c).unwrap();
            gemm_bf16(gpu, &spec, &ad, &bd, &cd).unwrap();
            let expected = reference(&spec, &a, &b, &c);
            // f32 accumulation of exact bf16 products: only summation order differs.
            assert_close(
                &gpu.download(&cd).unwrap(),
                &expected,
                1e-5,
                &format!("{spec:?}, {tile:?} tile, on {}", gpu.name()),
            );
        }
    }
}

#[test]
fn simt_gemm_matches_the_cpu_for_any_shape() {
    let mut shapes = specs();
    // Extents that are not multiples of 8 (the tensor-core kernel refuses these).
    shapes.push(Gemm {
        a_transposed: true,
        ..Gemm::new(67, 5, 33)
    });
    for gpu in gpus() {
        for (s, spec) in shapes.iter().enumerate() {
            let (sa, sb, sc) = (
                spec.batch * spec.m * spec.k,
                spec.batch * spec.k * spec.n,
                spec.batch * spec.m * spec.n,
            );
            let a = random(sa, -1.0, 1.0, 100 + s as u64);
            let b = random(sb, -1.0, 1.0, 200 + s as u64);
            let c = random(sc, -1.0, 1.0, 300 + s as u64);
            let (ad, bd, cd) = (
                gpu.upload(&a).unwrap(),
                gpu.upload(&b).unwrap(),
                gpu.upload(&c).unwrap(),
            );
            gemm_f32(&gpu, spec, &ad, &bd, &cd).unwrap();
            let expected = reference(spec, &a, &b, &c);
            assert_close(
                &gpu.download(&cd).unwrap(),
                &expected,
                1e-5,
                &format!("{spec:?} on {}", gpu.name()),
            );
        }
    }
}

#[test]
fn tensor_core_gemm_refuses_unaligned_extents_and_wrong_buffers() {
    let gpu = ditmoe_cuda::Gpu::emulator();
    let spec = Gemm::new(8, 8, 12);
    let a = gpu.zeros::<bf16>(96).unwrap();
    let b = gpu.zeros::<bf16>(96).unwrap();
    let c = gpu.zeros::<f32>(64).unwrap();
    let err = gemm_bf16(&gpu, &spec, &a, &b, &c).unwrap_err().to_string();
    assert!(
        err.contains("multiple of 8") && err.contains("gemm_f32"),
        "{err}"
    );
    let spec = Gemm::new(8, 8, 16);
    let err = gemm_bf16(&gpu, &spec, &a, &b, &c).unwrap_err().to_string();
    assert!(
        err.contains("gemm A: expected 128 elements, found 96"),
        "{err}"
    );
}

/// The group sizes as the dispatch order leaves them on the device.
fn device_counts(sizes: &[usize]) -> Vec<u32> {
    sizes.iter().map(|&s| s as u32).collect()
}

/// The groups, with their sizes on the host or as device counts.
fn groups<'a>(sizes: &'a [usize], counts: &'a Buffer<u32>, on_device: bool) -> Groups<'a> {
    if on_device {
        Groups::Device {
            counts,
            rows: sizes.iter().sum(),
        }
    } else {
        Groups::Host(sizes)
    }
}

#[test]
fn grouped_gemm_multiplies_each_group_by_its_own_weights() {
    // Skewed groups: one spans two row tiles, one is empty, one is a single row.
    let group_sizes = [130usize, 0, 1, 37];
    let (k, n) = (24, 40);
    let rows: usize = group_sizes.iter().sum();
    for (gpu, tile) in gpus()
        .iter()
        .flat_map(|gpu| GemmTile::ALL.map(|tile| (gpu, tile)))
    {
        let _tile = precision::set(precision::current().with_gemm_tile(tile));
        let counts = gpu.upload(&device_counts(&group_sizes)).unwrap();
        for (weights_transposed, sizes_on_device) in
            [(true, false), (false, false), (true, true), (false, true)]
        {
            let x = bf16_exact(random(rows * k, -1.0, 1.0, 60));
            let w = bf16_exact(random(group_sizes.len() * k * n, -1.0, 1.0, 61));
            let out = gpu.zeros::<f32>(rows * n).unwrap();
            ditmoe_cuda::ops::gemm::grouped_gemm_bf16(
                gpu,
                &gpu.upload(&to_bf16(&x)).unwrap(),
                groups(&group_sizes, &counts, sizes_on_device),
                &gpu.upload(&to_bf16(&w)).unwrap(),
                weights_transposed,
                n,
                &out,
            )
            .unwrap();
            // Reference: each group's rows times its weight matrix, on the CPU.
            let xt = Tensor::from_slice(&x, &[rows, k])
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let wt = Tensor::from_slice(&w, &[group_sizes.len(), k * n])
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let mut expected = Vec::new();
            let mut start = 0;
            for (g, &size) in group_sizes.iter().enumerate() {
                let wg = wt.narrow(0, g, 1).unwrap();
                let wg = if weights_transposed {
                    wg.reshape(&[n, k]).unwrap().t().unwrap()
                } else {
                    wg.reshape(&[k, n]).unwrap()
                };
                let part = xt.narrow(0, start, size).unwrap().matmul(&wg).unwrap();
                expected.extend(values(&part));
                start += size;
            }
            let what = format!(
                "grouped, weights transposed: {weights_transposed}, sizes on the device: \
                 {sizes_on_device}, {tile:?} tile, on {}",
                gpu.name()
            );
            assert_close(&gpu.download(&out).unwrap(), &expected, 1e-5, &what);
        }
    }
}

#[test]
fn device_schedules_handle_many_groups() {
    // 300 groups of 0..=2 rows: more groups than threads in the schedule's block.
    let sizes: Vec<usize> = (0..300).map(|g| g % 3).collect();
    let rows: usize = sizes.iter().sum();
    let (k, n) = (8, 8);
    let x = bf16_exact(random(rows * k, -1.0, 1.0, 80));
    let w = bf16_exact(random(sizes.len() * n * k, -1.0, 1.0, 81));
    for gpu in gpus() {
        let (xd, wd) = (
            gpu.upload(&to_bf16(&x)).unwrap(),
            gpu.upload(&to_bf16(&w)).unwrap(),
        );
        let counts = gpu.upload(&device_counts(&sizes)).unwrap();
        let outputs: Vec<Vec<f32>> = [false, true]
            .into_iter()
            .map(|on_device| {
                let out = gpu.zeros::<f32>(rows * n).unwrap();
                let groups = groups(&sizes, &counts, on_device);
                ditmoe_cuda::ops::gemm::grouped_gemm_bf16(&gpu, &xd, groups, &wd, true, n, &out)
                    .unwrap();
                gpu.download(&out).unwrap()
            })
            .collect();
        assert_eq!(outputs[0], outputs[1], "{}", gpu.name());
        assert!(outputs[0].iter().any(|&v| v != 0.0));
    }
}

#[test]
fn grouped_weight_gradients_sum_over_each_groups_rows_only() {
    // M = 136: two row tiles of each dW_g.
    let group_sizes = [130usize, 0, 1, 37];
    let (m, n) = (136, 40);
    let rows: usize = group_sizes.iter().sum();
    let cases = [false, true]
        .into_iter()
        .flat_map(|d| GemmTile::ALL.map(|t| (d, t)));
    for (gpu, (sizes_on_device, tile)) in gpus()
        .iter()
        .flat_map(|gpu| cases.clone().map(move |case| (gpu, case)))
    {
        let _tile = precision::set(precision::current().with_gemm_tile(tile));
        let counts = gpu.upload(&device_counts(&group_sizes)).unwrap();
        let dy = bf16_exact(random(rows * m, -1.0, 1.0, 70));
        let x = bf16_exact(random(rows * n, -1.0, 1.0, 71));
        let out = gpu.zeros::<f32>(group_sizes.len() * m * n).unwrap();
        ditmoe_cuda::ops::gemm::grouped_weight_grad_bf16(
            gpu,
            &gpu.upload(&to_bf16(&dy)).unwrap(),
            &gpu.upload(&to_bf16(&x)).unwrap(),
            groups(&group_sizes, &counts, sizes_on_device),
            &out,
        )
        .unwrap();
        let dyt = Tensor::from_slice(&dy, &[rows, m])
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let xt = Tensor::from_slice(&x, &[rows, n])
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let mut expected = Vec::new();
        let mut start = 0;
        for &size in &group_sizes {
            let g = dyt
                .narrow(0, start, size)
                .unwrap()
                .t()
                .unwrap()
                .matmul(&xt.narrow(0, start, size).unwrap())
                .unwrap();
            expected.extend(values(&g));
            start += size;
        }
        assert_close(
            &gpu.download(&out).unwrap(),
            &expected,
            1e-5,
            &format!(
                "grouped dW, sizes on the device: {sizes_on_device}, {tile:?} tile, on {}",
                gpu.name()
            ),
        );
    }
}
