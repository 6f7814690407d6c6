//! The subcommands that exist so far: `zoo` and `forward`.

use ditmoe_autograd::Var;
use ditmoe_nn::accounting::model_cost;
use ditmoe_nn::checkpoint::{load_model, read_tensors, write_tensors};
use ditmoe_nn::presets::{preset, preset_names};
use ditmoe_nn::ForwardOptions;
use ditmoe_tensor::DType;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Serialize)]
struct ZooRow {
    name: String,
    params_total: u64,
    params_activated: u64,
    gmacs: f64,
}

/// Prints every preset's size and cost.
pub fn zoo(image_size: usize, json: bool) -> Result<(), String> {
    let rows = preset_names()
        .into_iter()
        .map(|name| {
            let cost = model_cost(&preset(&name, image_size)?);
            Ok(ZooRow {
                name,
                params_total: cost.params_total,
                params_activated: cost.params_activated,
                gmacs: cost.gmacs,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if json {
        return print(&(serde_json::to_string_pretty(&rows).expect("rows serialise") + "\n"));
    }
    let mut table = format!(
        "{:<24} {:>16} {:>18} {:>10}\n",
        "preset", "params (total)", "params (activated)", "GMACs"
    );
    for row in rows {
        table += &format!(
            "{:<24} {:>16} {:>18} {:>10.2}\n",
            row.name, row.params_total, row.params_activated, row.gmacs
        );
    }
    table += &format!("(image size {image_size}: latent presets see {0}×{0}×4 latents; tiny-* presets are 32×32 RGB)\n", image_size / 8);
    print(&table)
}

/// Writes to stdout; a closed pipe (`ditmoe zoo | head`) ends the output quietly.
fn print(text: &str) -> Result<(), String> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("writing to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// Loads a checkpoint, runs it on `inputs` in evaluation mode, writes `out` and the router
/// probabilities of every MoE block.
pub fn forward(checkpoint: &Path, inputs: &Path, out: &Path) -> Result<(), String> {
    let model = load_model(checkpoint).map_err(|e| e.to_string())?;
    let tensors = read_tensors(inputs).map_err(|e| e.to_string())?.tensors;
    let get = |name: &str, dtype: DType| {
        let t = tensors
            .get(name)
            .ok_or_else(|| format!("{}: missing input tensor `{name}`", inputs.display()))?;
        t.to_dtype(dtype)
            .map_err(|e| format!("{}: input `{name}`: {e}", inputs.display()))
    };
    let (x, t, y) = (
        get("x", DType::F32)?,
        get("t", DType::F32)?,
        get("y", DType::I64)?,
    );
    let result = ditmoe_autograd::no_grad(|| {
        model.forward(
            &Var::constant(x),
            &t,
            &y,
            ForwardOptions {
                label_dropout: None,
                record_routing: true,
            },
        )
    })
    .map_err(|e| format!("forward: {e}"))?;
    let mut written = BTreeMap::from([("out".to_string(), result.out.value())]);
    for (block, record) in result.routing.iter().enumerate() {
        if let Some(record) = record {
            written.insert(
                format!("router_probs.blocks.{block}"),
                record.scores.clone(),
            );
        }
    }
    write_tensors(out, &written, HashMap::new()).map_err(|e| e.to_string())?;
    println!("wrote {} tensor(s) to {}", written.len(), out.display());
    Ok(())
}
