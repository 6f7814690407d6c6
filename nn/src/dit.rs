//! The DiT model (Peebles & Xie, 2023) with a dense or MoE FFN per block: patchify + embed,
//! N adaLN-Zero blocks conditioned on c = t_emb + y_emb, final adaLN layer, unpatchify.

use crate::config::{DitConfig, FfnKind};
use crate::layers::adaln::norm;
use crate::layers::{
    modulate, patchify, sincos_pos_embed_2d, unpatchify, AdaLnModulation, Attention, LabelEmbedder,
    Linear, Mlp, PatchEmbed, TimestepEmbedder,
};
use crate::module::{Module, Visitor};
use crate::moe::{MoeLayer, RouterConfig, RoutingRecord};
use ditmoe_autograd::Var;
use ditmoe_tensor::{seeded_rng, DType, Device, Result, SeededRng, Tensor, TensorError};

/// A block's FFN.
pub enum Ffn {
    Dense(Mlp),
    /// Boxed: a MoE layer is many times the size of a dense MLP.
    Moe(Box<MoeLayer>),
}

/// One DiT block: x += gate_msa·Attn(mod(LN(x))); x += gate_mlp·FFN(mod(LN(x))).
pub struct DitBlock {
    pub attn: Attention,
    pub ffn: Ffn,
    pub ada_ln: AdaLnModulation,
}

/// What a block adds besides its output: the MoE balance loss and routing record, if any.
pub struct BlockExtras {
    pub aux_loss: Option<Var>,
    pub routing: Option<RoutingRecord>,
}

impl DitBlock {
    pub fn new(config: &DitConfig, index: usize, rng: &mut SeededRng) -> Result<Self> {
        let d = config.hidden_size;
        let attn = Attention::new(d, config.num_heads, rng)?;
        let ffn = match config.ffn(index) {
            FfnKind::Dense => Ffn::Dense(Mlp::new(d, config.mlp_hidden(), rng)?),
            FfnKind::Moe(moe) => {
                // A two-layer router's target head predicts one token's patch of the target.
                let target_width = config.patch_size * config.patch_size * config.in_channels;
                let layer = MoeLayer::with_target_width(d, moe, Some(target_width), rng)?;
                Ffn::Moe(Box::new(layer))
            }
        };
        Ok(DitBlock {
            attn,
            ffn,
            ada_ln: AdaLnModulation::new(d, 6, rng)?,
        })
    }

    /// One block; `training` as in [`ForwardOptions::training`], `target` each token's patch of
    /// the training target `[B, T, p²·C]` (for a two-layer router's regularisation).
    pub fn forward(
        &self,
        x: &Var,
        c: &Var,
        target: Option<&Tensor>,
        record_routing: bool,
        training: bool,
    ) -> Result<(Var, BlockExtras)> {
        let m = self.ada_ln.forward(c)?;
        let (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) =
            (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
        let attn = self
            .attn
            .forward(&modulate(&norm(x)?, shift_msa, scale_msa)?)?;
        let x = x.add(&gate_msa.unsqueeze(1)?.mul(&attn)?)?;
        let h = modulate(&norm(&x)?, shift_mlp, scale_mlp)?;
        let (ffn, extras) = match &self.ffn {
            Ffn::Dense(mlp) => (
                {
                    let _section = ditmoe_tensor::profile::section("mlp");
                    mlp.forward(&h)?
                },
                BlockExtras {
                    aux_loss: None,
                    routing: None,
                },
            ),
            Ffn::Moe(moe) => {
                let out = moe.forward_with_target(&h, target, record_routing, training)?;
                (
                    out.y,
                    BlockExtras {
                        aux_loss: out.aux_loss,
                        routing: out.record,
                    },
                )
            }
        };
        Ok((x.add(&gate_mlp.unsqueeze(1)?.mul(&ffn)?)?, extras))
    }
}

impl Module for DitBlock {
    fn visit(&self, v: &mut Visitor) {
        v.child("attn", &self.attn);
        match &self.ffn {
            Ffn::Dense(mlp) => v.child("mlp", mlp),
            Ffn::Moe(moe) => v.child(moe.name_in_block(), moe.as_ref()),
        }
        v.child("adaLN_modulation", &self.ada_ln);
    }
}

/// adaLN (shift, scale) → modulate(LN(x)) → Linear(D → p²·C_out).
pub struct FinalLayer {
    pub ada_ln: AdaLnModulation,
    pub linear: Linear,
}

impl FinalLayer {
    pub fn new(config: &DitConfig, rng: &mut SeededRng) -> Result<Self> {
        let p = config.patch_size;
        let linear = Linear::new(config.hidden_size, p * p * config.out_channels(), true, rng)?;
        linear.zero_init()?;
        Ok(FinalLayer {
            ada_ln: AdaLnModulation::new(config.hidden_size, 2, rng)?,
            linear,
        })
    }

    pub fn forward(&self, x: &Var, c: &Var) -> Result<Var> {
        let m = self.ada_ln.forward(c)?;
        self.linear.forward(&modulate(&norm(x)?, &m[0], &m[1])?)
    }
}

impl Module for FinalLayer {
    fn visit(&self, v: &mut Visitor) {
        v.child("adaLN_modulation", &self.ada_ln);
        v.child("linear", &self.linear);
    }
}

/// Options of one forward pass.
#[derive(Default)]
pub struct ForwardOptions<'a> {
    /// Training: drop labels to the null class with the configured probability.
    pub label_dropout: Option<&'a mut SeededRng>,
    /// Keep each MoE layer's routing record.
    pub record_routing: bool,
    /// A training pass: MoE layers with routing state move it (state that changes in the
    /// forward pass, as in the official code): a global pool (DiffMoE) routes by its training
    /// rule, adds its capacity predictor's loss to the aux loss and moves its thresholds; a
    /// thresholded race moves τ; ReLU routing moves λ. Otherwise the global pool and the
    /// thresholded race sample by their inference rule; the other rules route the same either
    /// way.
    pub training: bool,
    /// What the model's data channels are trained to predict, `[N, C, H, W]` (ε, or the flow
    /// velocity): Race-DiT's two-layer routers learn to predict it too (a training pass of a
    /// model with such routers needs it).
    pub prediction_target: Option<&'a Tensor>,
}

/// A forward pass's results.
pub struct DitOutput {
    /// `[N, C_out, H, W]`.
    pub out: Var,
    /// Sum of the MoE layers' auxiliary losses (already scaled by their coefficients).
    pub aux_loss: Option<Var>,
    /// Per block: the routing record of its MoE layer (when asked for and the block has one).
    pub routing: Vec<Option<RoutingRecord>>,
    /// Per block, when routing is recorded: the root mean square of its output (the residual
    /// stream after it), whose growth with depth is Race-DiT's motivation for regularising the
    /// shallow routers.
    pub block_output_rms: Vec<f64>,
}

pub struct Dit {
    pub config: DitConfig,
    pub x_embedder: PatchEmbed,
    /// The fixed sin-cos table `[1, T, D]` (saved as a buffer, never trained).
    pub pos_embed: Var,
    pub t_embedder: TimestepEmbedder,
    pub y_embedder: LabelEmbedder,
    pub blocks: Vec<DitBlock>,
    pub final_layer: FinalLayer,
}

impl Dit {
    /// A freshly initialised model (SPEC §1 initialisation) drawn from `seed`.
    pub fn new(config: DitConfig, seed: u64) -> Result<Self> {
        config
            .validate()
            .map_err(|m| TensorError::invalid("DiT", m))?;
        let rng = &mut seeded_rng(seed);
        let d = config.hidden_size;
        let x_embedder = PatchEmbed::new(config.in_channels, d, config.patch_size, rng)?;
        let pos_embed = Var::constant(sincos_pos_embed_2d(d, config.grid())?);
        let t_embedder = TimestepEmbedder::new(d, rng)?;
        let y_embedder = LabelEmbedder::new(config.num_classes, d, config.class_dropout_prob, rng)?;
        let blocks = (0..config.depth)
            .map(|i| DitBlock::new(&config, i, rng))
            .collect::<Result<_>>()?;
        let final_layer = FinalLayer::new(&config, rng)?;
        Ok(Dit {
            config,
            x_embedder,
            pos_embed,
            t_embedder,
            y_embedder,
            blocks,
            final_layer,
        })
    }

    /// The class index of the null (unconditional) label.
    pub fn null_class(&self) -> i64 {
        self.config.num_classes as i64
    }

    /// x `[N, C, H, W]`, t `[N]` (timesteps), y `[N]` i64 labels → `[N, C_out, H, W]`.
    pub fn forward(
        &self,
        x: &Var,
        t: &Tensor,
        y: &Tensor,
        options: ForwardOptions,
    ) -> Result<DitOutput> {
        let c = &self.config;
        let expected = [
            x.shape().first().copied().unwrap_or(0),
            c.in_channels,
            c.input_size,
            c.input_size,
        ];
        if x.shape() != expected {
            return Err(TensorError::shape(
                "DiT forward",
                format!(
                    "x of shape [N, {}, {}, {}]",
                    c.in_channels, c.input_size, c.input_size
                ),
                x.shape(),
            ));
        }
        t.check_shape("DiT forward (t)", &[expected[0]])?;
        y.check_shape("DiT forward (y)", &[expected[0]])?;
        // Each token's patch of the target, for the two-layer routers that predict it (none
        // otherwise: no copy).
        let predicts_target = c.moe.is_some_and(|m| m.router != RouterConfig::Linear);
        let target = match options.prediction_target {
            Some(target) => {
                target.check_shape("DiT forward (prediction target)", &expected)?;
                predicts_target
                    .then(|| patchify(&Var::constant(target.clone()), c.patch_size))
                    .transpose()?
                    .map(|tokens| tokens.value())
            }
            None => None,
        };
        let mut h = self.x_embedder.forward(x)?.add(&self.pos_embed)?;
        let cond = self
            .t_embedder
            .forward(t)?
            .add(&self.y_embedder.forward(y, options.label_dropout)?)?;
        let mut aux_loss: Option<Var> = None;
        let mut routing = Vec::with_capacity(self.blocks.len());
        let mut block_sum_of_squares = Vec::new();
        for block in &self.blocks {
            let (next, extras) = block.forward(
                &h,
                &cond,
                target.as_ref(),
                options.record_routing,
                options.training,
            )?;
            h = next;
            if options.record_routing {
                block_sum_of_squares.push(h.value().sum_of_squares()?);
            }
            if let Some(loss) = extras.aux_loss {
                aux_loss = Some(match aux_loss {
                    Some(total) => total.add(&loss)?,
                    None => loss,
                });
            }
            routing.push(extras.routing);
        }
        // Read back after the last block, so that no block waits for the host.
        let elements = h.value().numel().max(1) as f64;
        let block_output_rms = block_sum_of_squares
            .iter()
            .map(|s| Ok((s.to_device(Device::Cpu)?.item()? / elements).sqrt()))
            .collect::<Result<Vec<f64>>>()?;
        let out = unpatchify(
            &self.final_layer.forward(&h, &cond)?,
            c.patch_size,
            c.out_channels(),
        )?;
        Ok(DitOutput {
            out,
            aux_loss,
            routing,
            block_output_rms,
        })
    }

    /// Classifier-free guidance (Ho & Salimans, 2022): runs the batch with its labels and with
    /// the null label together, then returns uncond + scale·(cond − uncond) on every data
    /// channel. Learned-variance channels (when `learn_sigma`) are taken from the conditional
    /// half unguided. (The DiT reference guides only the first 3 channels, a quirk.)
    pub fn forward_with_cfg(&self, x: &Var, t: &Tensor, y: &Tensor, scale: f64) -> Result<Var> {
        let n = x.shape()[0];
        let null =
            Tensor::full(&[n], self.null_class() as f64, DType::I64)?.to_device(y.device())?;
        let both = Var::concat(&[x, x], 0)?;
        let out = self
            .forward(
                &both,
                &Tensor::concat(&[t, t], 0)?,
                &Tensor::concat(&[y, &null], 0)?,
                ForwardOptions::default(),
            )?
            .out;
        let halves = out.chunk(2, 0)?;
        let c = self.config.in_channels;
        let rest = self.config.out_channels() - c;
        let (cond, uncond) = (halves[0].narrow(1, 0, c)?, halves[1].narrow(1, 0, c)?);
        let guided = uncond.add(&cond.sub(&uncond)?.mul_scalar(scale)?)?;
        if rest == 0 {
            return Ok(guided);
        }
        Var::concat(&[&guided, &halves[0].narrow(1, c, rest)?], 1)
    }
}

impl Module for Dit {
    fn visit(&self, v: &mut Visitor) {
        v.child("x_embedder", &self.x_embedder);
        v.buffer("pos_embed", &self.pos_embed);
        v.child("t_embedder", &self.t_embedder);
        v.child("y_embedder", &self.y_embedder);
        for (i, block) in self.blocks.iter().enumerate() {
            v.child(&format!("blocks.{i}"), block);
        }
        v.child("final_layer", &self.final_layer);
    }
}
