//! GEMM on the GPU: our tensor-core kernel (`gemm_bf16`) against cuBLAS in the same run, at
//! square sizes 1024³–8192³ and at the FFN shapes of DiT-MoE-S/B (16384 tokens), plus our SIMT
//! f32 fallback at the small sizes; and the grouped expert GEMM (`grouped_gemm_bf16`, 8 and 16
//! experts, balanced and skewed groups) against a per-expert loop of cuBLAS calls and one dense
//! cuBLAS GEMM of equal FLOPs; the FlashAttention-2 forward and backward at S = 1024–8192; and
//! the MoE dispatch order on the device against the host sort it replaced. Throughput is in
//! FLOP/s (2·M·N·K per product, 4·heads·S²·d per attention forward, 2.5× that backward) or
//! routed pairs/s.
//!
//! The cuBLAS baseline is its bf16 GEMM (f32 compute, bf16 output — what PyTorch calls for a
//! bf16 matmul); ours writes f32, a little more traffic. Without a GPU this prints why and
//! measures nothing.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm as _, GemmConfig};
use ditmoe_cuda::ops::attention::{
    flash_attention_backward, flash_attention_forward, AttentionShape,
};
use ditmoe_cuda::ops::elementwise::{self as ew, Broadcast};
use ditmoe_cuda::ops::gemm::{gemm_bf16, gemm_f32, grouped_gemm_bf16, Gemm, GemmTile, Groups};
use ditmoe_cuda::ops::routing::{dispatch_order, expert_race_positions};
use ditmoe_cuda::ops::swiglu::{swiglu, swiglu_backward};
use ditmoe_cuda::precision;
use ditmoe_cuda::{BinaryOp, Gpu, UnaryOp};
use half::bf16;

/// (label, M, N, K)
const SHAPES: [(&str, usize, usize, usize); 8] = [
    ("1024^3", 1024, 1024, 1024),
    ("2048^3", 2048, 2048, 2048),
    ("4096^3", 4096, 4096, 4096),
    ("8192^3", 8192, 8192, 8192),
    ("S-ffn-up 16384x1536x384", 16384, 1536, 384),
    ("S-ffn-down 16384x384x1536", 16384, 384, 1536),
    ("B-ffn-up 16384x3072x768", 16384, 3072, 768),
    ("B-ffn-down 16384x768x3072", 16384, 768, 3072),
];

/// Short windows: a GPU kernel runs hundreds of times in a second, and the whole benchmark has
/// to fit a lent GPU's few minutes.
const SAMPLES: usize = 10;
const WARM_UP: Duration = Duration::from_millis(500);
const MEASUREMENT: Duration = Duration::from_secs(1);

fn filled(n: usize, seed: u32) -> Vec<bf16> {
    (0..n)
        .map(|i| {
            bf16::from_f32((((i as u32).wrapping_mul(2654435761) ^ seed) % 17) as f32 / 17.0 - 0.5)
        })
        .collect()
}

/// cuBLAS on the GPU's stream, or `None` (saying why) when the library cannot be loaded: our
/// kernels are then measured without their baseline.
fn cublas(stream: &std::sync::Arc<cudarc::driver::CudaStream>) -> Option<CudaBlas> {
    // Loading a missing library panics inside cudarc; turn that into a message.
    match std::panic::catch_unwind(|| CudaBlas::new(stream.clone())) {
        Ok(Ok(blas)) => Some(blas),
        Ok(Err(e)) => {
            eprintln!("cuBLAS baselines skipped: {e:?}");
            None
        }
        Err(_) => {
            eprintln!("cuBLAS baselines skipped: libcublas could not be loaded");
            None
        }
    }
}

fn bench_gemm(c: &mut Criterion) {
    let gpu = match Gpu::new(0) {
        Ok(gpu) => gpu,
        Err(why) => {
            eprintln!("GPU benchmarks skipped: {why}");
            return;
        }
    };
    eprintln!("GPU: {}", gpu.name());
    let stream = gpu.cuda_stream().expect("a driver GPU has a stream");
    let blas = cublas(&stream);
    let mut group = c.benchmark_group("gpu_gemm");
    for (label, m, n, k) in SHAPES {
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let a = gpu.upload(&filled(m * k, 1)).unwrap();
        let b = gpu.upload(&filled(k * n, 2)).unwrap();
        let out = gpu.zeros::<f32>(m * n).unwrap();
        let spec = Gemm::new(m, n, k);
        // Both CTA tiles: 128×128 (the default) and 128×256 (`_wide`).
        for (name, tile) in [
            ("ours_bf16", GemmTile::Square),
            ("ours_bf16_wide", GemmTile::Wide),
        ] {
            group.bench_function(BenchmarkId::new(name, label), |bench| {
                let _tile = precision::set(precision::current().with_gemm_tile(tile));
                bench.iter(|| {
                    gemm_bf16(&gpu, &spec, &a, &b, &out).unwrap();
                    gpu.synchronize().unwrap();
                });
            });
        }
        // cuBLAS is column-major: row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ.
        let mut c_blas = stream.alloc_zeros::<bf16>(m * n).unwrap();
        // SAFETY: the byte buffers hold m·k and k·n bf16 values.
        let a_view = unsafe { a.cuda_slice().unwrap().transmute::<bf16>(m * k).unwrap() };
        let b_view = unsafe { b.cuda_slice().unwrap().transmute::<bf16>(k * n).unwrap() };
        let config = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: n as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        if let Some(blas) = &blas {
            group.bench_function(BenchmarkId::new("cublas_bf16", label), |bench| {
                bench.iter(|| {
                    // SAFETY: the views and c_blas have the sizes the config names.
                    unsafe { blas.gemm(config, &b_view, &a_view, &mut c_blas) }.unwrap();
                    stream.synchronize().unwrap();
                })
            });
        }
        if m * n * k <= 2048 * 2048 * 2048 {
            let af: Vec<f32> = filled(m * k, 1).iter().map(|x| x.to_f32()).collect();
            let bf: Vec<f32> = filled(k * n, 2).iter().map(|x| x.to_f32()).collect();
            let (af, bf) = (gpu.upload(&af).unwrap(), gpu.upload(&bf).unwrap());
            group.bench_function(BenchmarkId::new("ours_f32_simt", label), |bench| {
                bench.iter(|| {
                    gemm_f32(&gpu, &spec, &af, &bf, &out).unwrap();
                    gpu.synchronize().unwrap();
                })
            });
        }
    }
    group.finish();
}

/// Expert group sizes of `tokens` rows over `experts`: balanced, or skewed (expert e gets a
/// share proportional to 1/(e+1), as an unbalanced router would give).
fn group_sizes(tokens: usize, experts: usize, skewed: bool) -> Vec<usize> {
    let weights: Vec<f64> = (0..experts)
        .map(|e| if skewed { 1.0 / (e + 1) as f64 } else { 1.0 })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut sizes: Vec<usize> = weights
        .iter()
        .map(|w| (tokens as f64 * w / total) as usize)
        .collect();
    sizes[0] += tokens - sizes.iter().sum::<usize>();
    sizes
}

/// The expert FFN up-projection of DiT-MoE-S (K = 384, N = 1536) over 16384 routed rows: one
/// grouped launch against a loop of per-expert GEMMs (ours and cuBLAS) and against one dense
/// cuBLAS GEMM of equal FLOPs (the ceiling).
fn bench_grouped(c: &mut Criterion) {
    let Ok(gpu) = Gpu::new(0) else {
        return; // bench_gemm already said why
    };
    let stream = gpu.cuda_stream().expect("a driver GPU has a stream");
    let blas = cublas(&stream);
    let (tokens, k, n) = (16384, 384, 1536);
    let mut group = c.benchmark_group("gpu_grouped_gemm");
    group.throughput(Throughput::Elements((2 * tokens * n * k) as u64));
    for experts in [8, 16] {
        let x = gpu.upload(&filled(tokens * k, 3)).unwrap();
        let w = gpu.upload(&filled(experts * n * k, 4)).unwrap();
        let out = gpu.zeros::<f32>(tokens * n).unwrap();
        for skewed in [false, true] {
            let sizes = group_sizes(tokens, experts, skewed);
            let label = format!("{experts}E {}", if skewed { "skewed" } else { "balanced" });
            for (name, tile) in [
                ("ours_grouped", GemmTile::Square),
                ("ours_grouped_wide", GemmTile::Wide),
            ] {
                group.bench_function(BenchmarkId::new(name, &label), |bench| {
                    let _tile = precision::set(precision::current().with_gemm_tile(tile));
                    bench.iter(|| {
                        grouped_gemm_bf16(&gpu, &x, Groups::Host(&sizes), &w, true, n, &out)
                            .unwrap();
                        gpu.synchronize().unwrap();
                    });
                });
            }
            // As the MoE layer runs it: sizes left on the device, the schedule built there.
            let counts: Vec<u32> = sizes.iter().map(|&s| s as u32).collect();
            let counts = gpu.upload(&counts).unwrap();
            let on_device = Groups::Device {
                counts: &counts,
                rows: tokens,
            };
            group.bench_function(
                BenchmarkId::new("ours_grouped_device_sizes", &label),
                |bench| {
                    bench.iter(|| {
                        grouped_gemm_bf16(&gpu, &x, on_device, &w, true, n, &out).unwrap();
                        gpu.synchronize().unwrap();
                    })
                },
            );
            // cuBLAS, one call per expert on its slice of rows (column-major: Cᵀ = W·Xᵀ).
            let x_view = unsafe {
                x.cuda_slice()
                    .unwrap()
                    .transmute::<bf16>(tokens * k)
                    .unwrap()
            };
            let w_view = unsafe {
                w.cuda_slice()
                    .unwrap()
                    .transmute::<bf16>(experts * n * k)
                    .unwrap()
            };
            let mut c_blas = stream.alloc_zeros::<bf16>(tokens * n).unwrap();
            if let Some(blas) = &blas {
                group.bench_function(
                    BenchmarkId::new("cublas_per_expert_loop", &label),
                    |bench| {
                        bench.iter(|| {
                            let mut start = 0;
                            for (e, &rows) in sizes.iter().enumerate() {
                                if rows == 0 {
                                    continue;
                                }
                                let config = GemmConfig {
                                    transa: cublasOperation_t::CUBLAS_OP_T,
                                    transb: cublasOperation_t::CUBLAS_OP_N,
                                    m: n as i32,
                                    n: rows as i32,
                                    k: k as i32,
                                    alpha: bf16::ONE,
                                    lda: k as i32,
                                    ldb: k as i32,
                                    beta: bf16::ZERO,
                                    ldc: n as i32,
                                };
                                let we = w_view.slice(e * n * k..(e + 1) * n * k);
                                let xe = x_view.slice(start * k..(start + rows) * k);
                                let mut ce = c_blas.slice_mut(start * n..(start + rows) * n);
                                // SAFETY: the slices have the sizes the config names.
                                unsafe { blas.gemm(config, &we, &xe, &mut ce) }.unwrap();
                                start += rows;
                            }
                            stream.synchronize().unwrap();
                        })
                    },
                );
            }
        }
        let dense = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: tokens as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        let x_view = unsafe {
            x.cuda_slice()
                .unwrap()
                .transmute::<bf16>(tokens * k)
                .unwrap()
        };
        let w_view = unsafe { w.cuda_slice().unwrap().transmute::<bf16>(n * k).unwrap() };
        let mut c_dense = stream.alloc_zeros::<bf16>(tokens * n).unwrap();
        if let Some(blas) = &blas {
            group.bench_function(
                BenchmarkId::new("cublas_dense_equal_flops", format!("{experts}E")),
                |bench| {
                    bench.iter(|| {
                        // SAFETY: the views and c_dense have the sizes the config names.
                        unsafe { blas.gemm(dense, &w_view, &x_view, &mut c_dense) }.unwrap();
                        stream.synchronize().unwrap();
                    })
                },
            );
        }
    }
    group.finish();
}

/// Our FlashAttention-2 forward at sequence lengths 1024–8192, head dims 64 and 128, 16 heads
/// (batch × heads), bf16, and the backward (Δ, the dK/dV kernel — one each at head dim 128 —
/// and the dQ kernel). Throughput counts the standard 4·heads·S²·d FLOPs forward and 2.5× that
/// backward; PyTorch's `scaled_dot_product_attention` at the same shapes is
/// `benches/gpu/sdpa.py`.
fn bench_attention(c: &mut Criterion) {
    let Ok(gpu) = Gpu::new(0) else {
        return;
    };
    let heads = 16;
    let mut group = c.benchmark_group("gpu_attention");
    for head_dim in [64, 128] {
        for tokens in [1024, 2048, 4096, 8192] {
            let n = heads * tokens * head_dim;
            let (q, k, v) = (
                gpu.upload(&filled(n, 5)).unwrap(),
                gpu.upload(&filled(n, 6)).unwrap(),
                gpu.upload(&filled(n, 7)).unwrap(),
            );
            let shape = AttentionShape {
                heads,
                tokens,
                head_dim,
            };
            let scale = (head_dim as f32).powf(-0.5);
            group.throughput(Throughput::Elements(
                (4 * heads * tokens * tokens * head_dim) as u64,
            ));
            group.bench_function(
                BenchmarkId::new(format!("ours_d{head_dim}"), tokens),
                |bench| {
                    bench.iter(|| {
                        flash_attention_forward(&gpu, &q, &k, &v, shape, scale).unwrap();
                        gpu.synchronize().unwrap();
                    })
                },
            );
            let forward = flash_attention_forward(&gpu, &q, &k, &v, shape, scale).unwrap();
            let d_out: Vec<f32> = filled(n, 8).iter().map(|x| x.to_f32()).collect();
            let d_out = gpu.upload(&d_out).unwrap();
            group.throughput(Throughput::Elements(
                (10 * heads * tokens * tokens * head_dim) as u64,
            ));
            group.bench_function(
                BenchmarkId::new(format!("ours_backward_d{head_dim}"), tokens),
                |bench| {
                    bench.iter(|| {
                        flash_attention_backward(
                            &gpu,
                            &q,
                            &k,
                            &v,
                            &forward.out,
                            &forward.lse,
                            &d_out,
                            shape,
                            scale,
                        )
                        .unwrap();
                        gpu.synchronize().unwrap();
                    })
                },
            );
        }
    }
    group.finish();
}

/// MoE dispatch of 16384 tokens × top-2 over 8 and 16 experts: our device counting sort
/// (`dispatch_order`, which downloads only the group sizes) against the host path it replaced
/// (download the pairs, stable sort by expert on the CPU, upload order, tokens and experts).
fn bench_routing(c: &mut Criterion) {
    let Ok(gpu) = Gpu::new(0) else {
        return;
    };
    let (tokens, k) = (16384usize, 2usize);
    let mut group = c.benchmark_group("gpu_routing");
    group.throughput(Throughput::Elements((tokens * k) as u64));
    for experts in [8usize, 16] {
        // Pseudo-random picks (a hash of the slot modulo E); the order does not care whether
        // a token picked one expert twice.
        let positions: Vec<u32> = (0..tokens * k)
            .map(|slot| {
                let pick = (slot as u32).wrapping_mul(2654435761) >> 7;
                ((slot / k) * experts) as u32 + pick % experts as u32
            })
            .collect();
        let on_device = gpu.upload(&positions).unwrap();
        group.bench_function(BenchmarkId::new("ours_device", experts), |bench| {
            bench.iter(|| {
                let order = dispatch_order(&gpu, &on_device, experts).unwrap();
                gpu.download(&order.counts).unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("host_sort", experts), |bench| {
            bench.iter(|| {
                let pairs = gpu.download(&on_device).unwrap();
                let mut order: Vec<u32> = (0..pairs.len() as u32).collect();
                order.sort_by_key(|&s| pairs[s as usize] % experts as u32);
                let tokens: Vec<u32> = order
                    .iter()
                    .map(|&s| pairs[s as usize] / experts as u32)
                    .collect();
                let owners: Vec<u32> = order
                    .iter()
                    .map(|&s| pairs[s as usize] % experts as u32)
                    .collect();
                let uploaded = (
                    gpu.upload(&order).unwrap(),
                    gpu.upload(&tokens).unwrap(),
                    gpu.upload(&owners).unwrap(),
                );
                gpu.synchronize().unwrap();
                uploaded
            })
        });
    }
    group.finish();
}

/// Expert race's selection of the best N·k of 16384 tokens × E scores (k = 2): our one-block
/// device radix select against the host path it replaced (download the scores, select the
/// N·k best with `select_nth_unstable`, sort them into grid order, upload the positions).
fn bench_expert_race(c: &mut Criterion) {
    let Ok(gpu) = Gpu::new(0) else {
        return;
    };
    let (tokens, k) = (16384usize, 2usize);
    let mut group = c.benchmark_group("gpu_expert_race");
    group.throughput(Throughput::Elements((tokens * k) as u64));
    for experts in [8usize, 16] {
        let scores: Vec<f32> = filled(tokens * experts, experts as u32)
            .into_iter()
            .map(f32::from)
            .collect();
        let scores = gpu.upload(&scores).unwrap();
        let picks = tokens * k;
        group.bench_function(BenchmarkId::new("ours_device", experts), |bench| {
            bench.iter(|| {
                let positions = expert_race_positions(&gpu, &scores, picks).unwrap();
                gpu.synchronize().unwrap();
                positions
            })
        });
        group.bench_function(BenchmarkId::new("host_select", experts), |bench| {
            bench.iter(|| {
                let values = gpu.download(&scores).unwrap();
                let mut ranked: Vec<u32> = (0..values.len() as u32).collect();
                ranked.select_nth_unstable_by(picks - 1, |&a, &b| {
                    values[b as usize]
                        .total_cmp(&values[a as usize])
                        .then(a.cmp(&b))
                });
                let mut chosen = ranked[..picks].to_vec();
                chosen.sort_unstable();
                let uploaded = gpu.upload(&chosen).unwrap();
                gpu.synchronize().unwrap();
                uploaded
            })
        });
    }
    group.finish();
}

/// SwiGLU over an expert FFN's hidden activations (16384 routed rows × 1536), forward and
/// backward: the fused kernels (one pass each way) against the composition they replaced
/// (SiLU, a product; SiLU's backward and the two products of the product's backward).
fn bench_swiglu(c: &mut Criterion) {
    let Ok(gpu) = Gpu::new(0) else {
        return;
    };
    let n = 16384 * 1536;
    let values = |seed: u32| -> Vec<f32> { filled(n, seed).into_iter().map(f32::from).collect() };
    let (gate, up, grad) = (
        gpu.upload(&values(1)).unwrap(),
        gpu.upload(&values(2)).unwrap(),
        gpu.upload(&values(3)).unwrap(),
    );
    let same = Broadcast::of(&[n], &[n]).unwrap();
    let mut group = c.benchmark_group("gpu_swiglu");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("fused_forward_backward", |bench| {
        bench.iter(|| {
            let h = swiglu(&gpu, &gate, &up).unwrap();
            let grads = swiglu_backward(&gpu, &gate, &up, &grad).unwrap();
            gpu.synchronize().unwrap();
            (h, grads)
        })
    });
    group.bench_function("silu_then_mul_forward_backward", |bench| {
        bench.iter(|| {
            let silu = ew::unary(&gpu, UnaryOp::Silu, &gate).unwrap();
            let h = ew::binary(&gpu, BinaryOp::Mul, &silu, &up, &same).unwrap();
            let d_silu = ew::binary(&gpu, BinaryOp::Mul, &grad, &up, &same).unwrap();
            let d_up = ew::binary(&gpu, BinaryOp::Mul, &grad, &silu, &same).unwrap();
            let d_gate = ew::unary_backward(&gpu, UnaryOp::Silu, &gate, &d_silu).unwrap();
            gpu.synchronize().unwrap();
            (h, d_up, d_gate)
        })
    });
    group.finish();
}

/// Short windows for every group, to fit a GPU lease.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_gemm, bench_grouped, bench_attention, bench_routing, bench_expert_race,
        bench_swiglu
}
criterion_main!(benches);
