//! Gradient checks of every layer (f64, random parameters) and the fused-attention parity.

mod common;

use common::{check_module, max_abs_diff, normal, randomized_f64};
use ditmoe_autograd::Var;
use ditmoe_nn::config::DitConfig;
use ditmoe_nn::dit::{DitBlock, FinalLayer};
use ditmoe_nn::layers::*;
use ditmoe_nn::Module;
use ditmoe_tensor::{seeded_rng, DType, Tensor};

fn rng() -> ditmoe_tensor::SeededRng {
    seeded_rng(7)
}

#[test]
fn linear_mlp_and_swiglu() {
    let x = Var::parameter(normal(&[2, 3, 4], 1));
    let linear = Linear::new(4, 5, true, &mut rng()).unwrap();
    randomized_f64(&linear, 0.5, 1);
    check_module(&linear, std::slice::from_ref(&x), || linear.forward(&x));
    let mlp = Mlp::new(4, 6, &mut rng()).unwrap();
    randomized_f64(&mlp, 0.5, 2);
    check_module(&mlp, std::slice::from_ref(&x), || mlp.forward(&x));
    for affine in [false, true] {
        let norm = LayerNorm::new(4, affine, 1e-5).unwrap();
        randomized_f64(&norm, 0.5, 10);
        check_module(&norm, std::slice::from_ref(&x), || norm.forward(&x));
        assert_eq!(norm.named_parameters().len(), if affine { 2 } else { 0 });
    }
    let swiglu = SwiGlu::new(4, 6, &mut rng()).unwrap();
    randomized_f64(&swiglu, 0.5, 3);
    check_module(&swiglu, std::slice::from_ref(&x), || swiglu.forward(&x));
}

#[test]
fn embeddings() {
    let ids = Tensor::from_vec(vec![2i64, 0, 2, 3], &[2, 2]).unwrap();
    let table = Embedding::new(4, 3, &mut rng()).unwrap();
    randomized_f64(&table, 1.0, 4);
    check_module(&table, &[], || table.forward(&ids));
    let labels = LabelEmbedder::new(3, 4, 0.1, &mut rng()).unwrap();
    randomized_f64(&labels, 1.0, 5);
    let y = Tensor::from_vec(vec![0i64, 3, 1], &[3]).unwrap(); // 3 = the null class
    check_module(&labels, &[], || labels.forward(&y, None));
    let t = Tensor::from_vec(vec![0.0f32, 17.0, 999.0], &[3]).unwrap();
    let time = TimestepEmbedder::new(8, &mut rng()).unwrap();
    randomized_f64(&time, 0.1, 6);
    check_module(&time, &[], || time.forward(&t));
}

#[test]
fn patch_embed_and_unpatchify() {
    let x = Var::parameter(normal(&[2, 2, 4, 4], 2));
    let embed = PatchEmbed::new(2, 4, 2, &mut rng()).unwrap();
    randomized_f64(&embed, 0.5, 7);
    check_module(&embed, std::slice::from_ref(&x), || embed.forward(&x));
    // Unpatchify lays a token out as (row, column, channel): check one element by hand.
    let tokens = Tensor::arange(0.0, 2.0 * 4.0 * 12.0, 1.0, DType::F64)
        .unwrap()
        .reshape(&[2, 4, 12])
        .unwrap();
    let image = unpatchify(&Var::constant(tokens), 2, 3).unwrap().value();
    assert_eq!(image.shape(), &[2, 3, 4, 4]);
    // Token 1 (grid row 0, col 1), patch row 1, col 0, channel 2 → pixel (1, 2), value 12 + (1·2 + 0)·3 + 2.
    let at =
        |n: usize, c: usize, h: usize, w: usize| image.to_vec_f64()[((n * 3 + c) * 4 + h) * 4 + w];
    assert_eq!(at(0, 2, 1, 2), 12.0 + 8.0);
}

#[test]
fn position_table_follows_the_reference_layout() {
    let table = sincos_pos_embed_2d(8, 3).unwrap().to_vec_f64();
    // Token (row 1, col 2) = index 5: [sin(2ω), cos(2ω)] for the column, then the row.
    let token = &table[5 * 8..6 * 8];
    let expected = [
        2f64.sin(),
        0.02f64.sin(),
        2f64.cos(),
        0.02f64.cos(),
        1f64.sin(),
        0.01f64.sin(),
        1f64.cos(),
        0.01f64.cos(),
    ];
    for (a, e) in token.iter().zip(expected) {
        assert!((a - e).abs() < 1e-6, "{token:?}");
    }
}

#[test]
fn adaln_attention_final_layer_and_dense_block() {
    let x = Var::parameter(normal(&[2, 4, 8], 3));
    let c = Var::parameter(normal(&[2, 8], 4));
    let ada = AdaLnModulation::new(8, 2, &mut rng()).unwrap();
    randomized_f64(&ada, 0.5, 8);
    check_module(&ada, &[x.clone(), c.clone()], || {
        let m = ada.forward(&c)?;
        modulate(&x, &m[0], &m[1])
    });
    let attn = Attention::new(8, 2, &mut rng()).unwrap();
    randomized_f64(&attn, 0.4, 9);
    check_module(&attn, std::slice::from_ref(&x), || attn.forward(&x));

    let config = DitConfig::dense(4, 2, 2, 8, 1, 2, 3);
    let final_layer = FinalLayer::new(&config, &mut rng()).unwrap();
    randomized_f64(&final_layer, 0.5, 10);
    check_module(&final_layer, &[x.clone(), c.clone()], || {
        final_layer.forward(&x, &c)
    });
    let block = DitBlock::new(&config, 0, &mut rng()).unwrap();
    randomized_f64(&block, 0.3, 11);
    check_module(&block, &[x.clone(), c.clone()], || {
        Ok(block.forward(&x, &c, None, false, false)?.0)
    });
}

#[test]
fn fused_attention_equals_naive_attention_in_values_and_gradients() {
    let (q, k, v) = (
        Var::parameter(normal(&[2, 3, 70, 16], 1)),
        Var::parameter(normal(&[2, 3, 70, 16], 2)),
        Var::parameter(normal(&[2, 3, 70, 16], 3)),
    );
    let fused = Var::flash_attention(&q, &k, &v, 0.25).unwrap();
    let weights = Var::constant(normal(&[2, 3, 70, 16], 4));
    let backprop = |y: &Var| y.mul(&weights)?.sum_all()?.backward();
    backprop(&fused).unwrap();
    let fused_grads: Vec<Tensor> = [&q, &k, &v].iter().map(|x| x.grad().unwrap()).collect();
    [&q, &k, &v].iter().for_each(|x| x.zero_grad());
    let naive = naive_attention(&q, &k, &v, 0.25).unwrap();
    backprop(&naive).unwrap();
    assert!(max_abs_diff(&fused.value(), &naive.value()) < 1e-12);
    for (x, fused_grad) in [&q, &k, &v].iter().zip(&fused_grads) {
        assert!(max_abs_diff(fused_grad, &x.grad().unwrap()) < 1e-11);
    }
    // And through the attention layer, fused vs naive kernel.
    let mut layer = Attention::new(16, 4, &mut rng()).unwrap();
    let x = Var::constant(normal(&[2, 9, 16], 5).to_dtype(DType::F32).unwrap());
    layer.kernel = AttentionKernel::Fused;
    let fused = layer.forward(&x).unwrap().value();
    layer.kernel = AttentionKernel::Naive;
    assert!(max_abs_diff(&fused, &layer.forward(&x).unwrap().value()) < 1e-5);
    // Auto picks by length on the CPU: naive for short sequences, fused from FUSED_FROM_TOKENS
    // on; on a GPU the fused kernels whenever they take the inputs, whatever the length.
    assert_eq!(
        AttentionKernel::Auto.resolve(9, Placement::Cpu),
        AttentionKernel::Naive
    );
    assert_eq!(
        AttentionKernel::Auto.resolve(FUSED_FROM_TOKENS, Placement::Cpu),
        AttentionKernel::Fused
    );
    assert_eq!(
        AttentionKernel::Auto.resolve(9, Placement::Gpu { fused: true }),
        AttentionKernel::Fused
    );
    assert_eq!(
        AttentionKernel::Auto.resolve(FUSED_FROM_TOKENS, Placement::Gpu { fused: false }),
        AttentionKernel::Naive
    );
    assert_eq!(
        AttentionKernel::Fused.resolve(9, Placement::Cpu),
        AttentionKernel::Fused
    );
}

#[test]
fn parameter_names_follow_the_reference() {
    let config = DitConfig::dense(4, 2, 2, 8, 1, 2, 3);
    let block = DitBlock::new(&config, 0, &mut rng()).unwrap();
    let names: Vec<String> = block
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
            "adaLN_modulation.1.weight",
            "adaLN_modulation.1.bias"
        ]
    );
}
