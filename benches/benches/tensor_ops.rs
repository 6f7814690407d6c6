//! CPU kernel benchmarks, each against a baseline in the same run:
//! - matmul: ditmoe's blocked GEMM vs `matrixmultiply` (a well-tuned SIMD crate) vs a naive loop;
//!   and at the DiT shapes in every operand form (vs `torch.matmul`: `benches/gemm-vs-torch.sh`);
//! - elementwise, softmax, layer_norm, sum: ditmoe vs a plain single-threaded loop over a `Vec`;
//! - a forward + backward step of a small MLP through autograd;
//! - the grouped expert GEMM (one job over all experts) vs one `matmul` per expert.
//!
//! Run: `cargo bench -p ditmoe-benches` (`DITMOE_THREADS` sets the thread count).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ditmoe_autograd::Var;
use ditmoe_tensor::{seeded_rng, DType, GroupSizes, Tensor};
use std::hint::black_box;
use std::time::Duration;

fn random(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F32, &mut seeded_rng(seed)).unwrap()
}

fn naive_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += aip * b[p * n + j];
            }
        }
    }
    c
}

fn crate_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    // SAFETY: the pointers cover m×k, k×n and m×n row-major buffers.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    c
}

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_f32");
    // Square sizes, then DiT-shaped products: tokens × hidden by hidden × 4·hidden (S/2, 32×32 latent).
    for &(m, k, n) in &[(128, 128, 128), (512, 512, 512), (1024, 384, 1536)] {
        let (a, b) = (random(&[m, k], 1), random(&[k, n], 2));
        let (av, bv) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        let label = format!("{m}x{k}x{n}");
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(BenchmarkId::new("ditmoe", &label), |bench| {
            bench.iter(|| black_box(a.matmul(&b).unwrap()))
        });
        let bt = random(&[n, k], 3).t().unwrap();
        group.bench_function(BenchmarkId::new("ditmoe_rhs_transposed", &label), |bench| {
            bench.iter(|| black_box(a.matmul(&bt).unwrap()))
        });
        group.bench_function(BenchmarkId::new("matrixmultiply", &label), |bench| {
            bench.iter(|| black_box(crate_matmul(&av, &bv, m, k, n)))
        });
        if m * k * n <= 512 * 512 * 512 {
            group.bench_function(BenchmarkId::new("naive", &label), |bench| {
                bench.iter(|| black_box(naive_matmul(&av, &bv, m, k, n)))
            });
        }
    }
    group.finish();
}

/// The products of a DiT-S / DiT-MoE-S training step (D = 384; 2048 or 1024 tokens; qkv,
/// expert up and down projections) in the three forms a step uses: `a·b` (an input gradient,
/// dy·W), `a·bᵀ` (a linear layer's forward, x·Wᵀ) and `aᵀ·b` (a weight gradient, dyᵀ·x).
/// `benches/gemm-vs-torch.sh` runs this group and `torch.matmul` on the same shapes
/// interleaved; the ids are `{form}/{m}x{k}x{n}`.
const DIT_SHAPES: [(usize, usize, usize); 4] = [
    (2048, 384, 1152),
    (1024, 384, 1536),
    (512, 384, 1536),
    (512, 1536, 384),
];

fn matmul_dit_shapes(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_f32_dit_shapes");
    for &(m, k, n) in &DIT_SHAPES {
        let label = format!("{m}x{k}x{n}");
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let forms = [
            ("a_b", random(&[m, k], 1), random(&[k, n], 2)),
            ("a_bt", random(&[m, k], 1), random(&[n, k], 2).t().unwrap()),
            ("at_b", random(&[k, m], 1).t().unwrap(), random(&[k, n], 2)),
        ];
        for (form, a, b) in &forms {
            group.bench_function(BenchmarkId::new(*form, &label), |bench| {
                bench.iter(|| black_box(a.matmul(b).unwrap()))
            });
        }
    }
    group.finish();
}

fn elementwise_and_rows(c: &mut Criterion) {
    let (rows, cols) = (4096, 384);
    let x = random(&[rows, cols], 4);
    let bias = random(&[cols], 5);
    let (xv, bv) = (x.to_vec::<f32>().unwrap(), bias.to_vec::<f32>().unwrap());

    let mut group = c.benchmark_group("rowwise_f32_4096x384");
    group.throughput(Throughput::Bytes((rows * cols * 4) as u64));
    group.bench_function("add_bias/ditmoe", |b| {
        b.iter(|| black_box(x.add(&bias).unwrap()))
    });
    group.bench_function("add_bias/loop", |b| {
        b.iter(|| {
            black_box(
                xv.chunks(cols)
                    .flat_map(|r| r.iter().zip(&bv).map(|(x, b)| x + b))
                    .collect::<Vec<f32>>(),
            )
        })
    });
    group.bench_function("gelu_tanh/ditmoe", |b| {
        b.iter(|| black_box(x.gelu_tanh().unwrap()))
    });
    group.bench_function("gelu_tanh/loop", |b| {
        b.iter(|| {
            black_box(
                xv.iter()
                    .map(|&v| 0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044715 * v * v * v)).tanh()))
                    .collect::<Vec<f32>>(),
            )
        })
    });
    group.bench_function("softmax/ditmoe", |b| {
        b.iter(|| black_box(x.softmax(1).unwrap()))
    });
    group.bench_function("softmax/loop", |b| {
        b.iter(|| {
            let mut out = xv.clone();
            for row in out.chunks_mut(cols) {
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let total: f32 = row
                    .iter_mut()
                    .map(|v| {
                        *v = (*v - max).exp();
                        *v
                    })
                    .sum();
                row.iter_mut().for_each(|v| *v /= total);
            }
            black_box(out)
        })
    });
    group.bench_function("layer_norm/ditmoe", |b| {
        b.iter(|| black_box(x.layer_norm(None, None, 1e-6).unwrap()))
    });
    group.bench_function("sum_rows/ditmoe", |b| {
        b.iter(|| black_box(x.sum(&[1], false).unwrap()))
    });
    group.bench_function("sum_rows/loop", |b| {
        b.iter(|| {
            black_box(
                xv.chunks(cols)
                    .map(|r| r.iter().sum::<f32>())
                    .collect::<Vec<f32>>(),
            )
        })
    });
    group.finish();
}

fn mlp_step(c: &mut Criterion) {
    let (batch, width) = (256, 384);
    let x = Var::constant(random(&[batch, width], 6));
    let w1 = Var::parameter(random(&[width, 4 * width], 7).mul_scalar(0.05).unwrap());
    let w2 = Var::parameter(random(&[4 * width, width], 8).mul_scalar(0.05).unwrap());
    let mut group = c.benchmark_group("autograd");
    group.throughput(Throughput::Elements(
        (3 * 2 * 2 * batch * width * 4 * width) as u64,
    ));
    group.bench_function("mlp_forward_backward_256x384", |b| {
        b.iter(|| {
            let loss = x
                .matmul(&w1)
                .unwrap()
                .gelu_tanh()
                .unwrap()
                .matmul(&w2)
                .unwrap()
                .powf(2.0)
                .unwrap()
                .mean_all()
                .unwrap();
            loss.backward().unwrap();
            w1.zero_grad();
            w2.zero_grad();
        })
    });
    group.finish();
}

/// SwiGLU's gated product over an expert FFN's hidden activations (4096 routed tokens × 1024),
/// forward and backward through autograd: the fused op (one node, one pass each way) against
/// the composition it replaced (SiLU then a product: two nodes, three backward passes).
fn swiglu(c: &mut Criterion) {
    let shape = [4096, 1024];
    let gate = Var::parameter(random(&shape, 9));
    let up = Var::parameter(random(&shape, 10));
    let mut group = c.benchmark_group("swiglu_f32_4096x1024");
    group.throughput(Throughput::Bytes((shape[0] * shape[1] * 4) as u64));
    let mut forward_backward = |name: &str, f: &dyn Fn() -> Var| {
        group.bench_function(name, |b| {
            b.iter(|| {
                f().sum_all().unwrap().backward().unwrap();
                gate.zero_grad();
                up.zero_grad();
            })
        });
    };
    forward_backward("fused/ditmoe", &|| gate.swiglu(&up).unwrap());
    forward_backward("silu_then_mul/ditmoe", &|| {
        gate.silu().unwrap().mul(&up).unwrap()
    });
    group.finish();
}

/// One MoE layer's expert products at DiT-MoE-S/4-8E2A, batch 8 (512 tokens, top-2: 1024
/// routed rows over 8 experts, with the skewed load a training step saw), for the up
/// projection 384 → 1536: forward, input gradient and weight gradients. The baseline is one
/// `matmul` per expert and a concatenation, as the CPU path did before the grouped kernel.
fn grouped_gemm(c: &mut Criterion) {
    let sizes = [1, 312, 0, 3, 315, 15, 151, 227];
    let (rows, d_in, d_out) = (sizes.iter().sum::<usize>(), 384, 1536);
    let groups = GroupSizes::host(&sizes);
    let (x, w, dy) = (
        random(&[rows, d_in], 1),
        random(&[sizes.len(), d_out, d_in], 2),
        random(&[rows, d_out], 3),
    );
    let per_expert = |f: &dyn Fn(usize, &Tensor) -> Tensor, t: &Tensor| {
        let outs: Vec<Tensor> = t
            .split(&sizes, 0)
            .unwrap()
            .iter()
            .enumerate()
            .map(|(g, rows)| f(g, rows))
            .collect();
        Tensor::concat(&outs.iter().collect::<Vec<_>>(), 0).unwrap()
    };
    let weight = |g: usize| w.narrow(0, g, 1).unwrap().squeeze(0).unwrap();
    let mut group = c.benchmark_group("grouped_gemm_f32_1024x384x1536_8experts");
    group.throughput(Throughput::Elements((2 * rows * d_in * d_out) as u64));
    group.bench_function("forward/ditmoe", |b| {
        b.iter(|| black_box(Tensor::grouped_matmul(&x, &groups, &w, true).unwrap()))
    });
    group.bench_function("forward/per_expert_matmul", |b| {
        b.iter(|| {
            black_box(per_expert(
                &|g, r| r.matmul(&weight(g).t().unwrap()).unwrap(),
                &x,
            ))
        })
    });
    group.bench_function("input_grad/ditmoe", |b| {
        b.iter(|| black_box(Tensor::grouped_matmul(&dy, &groups, &w, false).unwrap()))
    });
    group.bench_function("input_grad/per_expert_matmul", |b| {
        b.iter(|| black_box(per_expert(&|g, r| r.matmul(&weight(g)).unwrap(), &dy)))
    });
    group.bench_function("weight_grad/ditmoe", |b| {
        b.iter(|| black_box(Tensor::grouped_weight_grads(&dy, &x, &groups).unwrap()))
    });
    group.bench_function("weight_grad/per_expert_matmul", |b| {
        b.iter(|| {
            let (dys, xs) = (dy.split(&sizes, 0).unwrap(), x.split(&sizes, 0).unwrap());
            let grads: Vec<Tensor> = dys
                .iter()
                .zip(&xs)
                .map(|(dy, x)| dy.t().unwrap().matmul(x).unwrap())
                .collect();
            black_box(Tensor::stack(&grads.iter().collect::<Vec<_>>(), 0).unwrap())
        })
    });
    group.finish();
}

fn config() -> Criterion {
    // As `ditmoe` does: freed activation buffers stay in the process instead of being
    // page-faulted back in by the next call.
    assert!(
        ditmoe_tensor::memory::keep_freed_memory(),
        "glibc refused a malloc setting"
    );
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = matmul, matmul_dit_shapes, grouped_gemm, elementwise_and_rows, mlp_step, swiglu }
criterion_main!(benches);
