//! The catalogue of our PTX modules: each is a hand-written file in `cuda/kernels/`, embedded
//! in the binary with `include_str!` and loaded once per GPU on first use (`crate::gpu`).
//! Templated modules (the GEMM, whose tile layout is chosen per operand layout) are expanded
//! from Rust here, once.

pub mod attention;
mod codegen;
pub mod gemm;

use std::sync::OnceLock;

/// One PTX module: its name (used to launch its kernels) and its source text.
#[derive(Debug, Clone)]
pub struct ModuleSource {
    pub name: String,
    pub ptx: String,
}

fn plain(name: &str, ptx: &str) -> ModuleSource {
    ModuleSource {
        name: name.to_string(),
        ptx: ptx.to_string(),
    }
}

/// Every module, in the order `scripts/check-ptx.sh` reports them.
pub fn catalogue() -> &'static [ModuleSource] {
    static MODULES: OnceLock<Vec<ModuleSource>> = OnceLock::new();
    MODULES.get_or_init(|| {
        vec![
            plain("elementwise", include_str!("../../kernels/elementwise.ptx")),
            plain("rows", include_str!("../../kernels/rows.ptx")),
            plain("norm", include_str!("../../kernels/norm.ptx")),
            plain("index", include_str!("../../kernels/index.ptx")),
            plain("routing", include_str!("../../kernels/routing.ptx")),
            plain("swiglu", include_str!("../../kernels/swiglu.ptx")),
            plain("optim", include_str!("../../kernels/optim.ptx")),
            plain("gemm_f32", include_str!("../../kernels/gemm_f32.ptx")),
            ModuleSource {
                name: "attention".to_string(),
                ptx: attention::module(include_str!("../../kernels/attention.ptx")),
            },
            ModuleSource {
                name: "attention_backward".to_string(),
                ptx: attention::backward_module(include_str!(
                    "../../kernels/attention_backward.ptx"
                )),
            },
            ModuleSource {
                name: "gemm_bf16".to_string(),
                ptx: gemm::module(include_str!("../../kernels/gemm_bf16.ptx")),
            },
        ]
    })
}

/// The PTX text of module `name`.
pub fn module_source(name: &str) -> Option<&'static str> {
    catalogue()
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.ptx.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_is_ascii_and_names_distinct_kernels() {
        // ptxas rejects any non-ASCII byte, comments included.
        for module in catalogue() {
            if let Some((line, _)) = module.ptx.lines().enumerate().find(|(_, l)| !l.is_ascii()) {
                panic!("{}: line {} is not ASCII", module.name, line + 1);
            }
            let parsed = crate::emulator::parse_module(&module.ptx).unwrap();
            assert!(!parsed.kernels.is_empty(), "{}", module.name);
        }
    }
}
