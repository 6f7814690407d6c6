//! Parses the subset of PTX our kernels are written in into a list of kernels, each a flat list
//! of decoded instructions with registers resolved to indices and labels to instruction numbers.
//!
//! The grammar follows the PTX ISA ("Parallel Thread Execution ISA", NVIDIA), chapters 4–5:
//! module directives (`.version`, `.target`, `.address_size`), `.entry` kernels with `.param`
//! lists, `.reg` declarations (including the `%r<N>` range form), `.shared` arrays (static, or
//! `.extern` for dynamic shared memory), labels, predicated instructions, and operands that are
//! registers, immediates, special registers, vectors `{..}` and addresses `[base+offset]`.

use std::collections::HashMap;

/// A scalar type suffix of an instruction (`.f32`, `.u64`, `.bf16x2`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    BF16,
    F32,
    F64,
    Pred,
    BF16x2,
    F16x2,
}

impl Ty {
    fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "bf16" => Ty::BF16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            "bf16x2" => Ty::BF16x2,
            "f16x2" => Ty::F16x2,
            _ => return None,
        })
    }

    /// Width in bytes of one value of this type.
    pub fn bytes(self) -> usize {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 | Ty::Pred => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::BF16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::BF16x2 | Ty::F16x2 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
        }
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::BF16 | Ty::F32 | Ty::F64)
    }
}

/// A special register (PTX ISA §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Tid(usize),
    Ntid(usize),
    Ctaid(usize),
    Nctaid(usize),
    LaneId,
    WarpId,
}

/// A literal operand, kept as written so the instruction's type decides how to read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Imm {
    Int(i64),
    /// `0fXXXXXXXX`: the bits of an f32.
    F32Bits(u32),
    /// `0dXXXXXXXXXXXXXXXX`: the bits of an f64.
    F64Bits(u64),
    Float(f64),
}

/// Where an address operand starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Base {
    Reg(usize),
    /// A `.shared` variable or a `.param` name.
    Symbol(String),
    Absolute,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Reg(usize),
    Imm(Imm),
    Special(Special),
    /// A label (branch target, resolved to an instruction index) or a variable name.
    Symbol(String),
    Vector(Vec<Operand>),
    Address {
        base: Base,
        offset: i64,
    },
}

/// One decoded instruction: `@guard opcode.mods operands`.
#[derive(Debug, Clone)]
pub struct Inst {
    /// Predicate register and whether it is negated (`@!%p`).
    pub guard: Option<(usize, bool)>,
    pub opcode: String,
    /// Every dot-suffix except the types, in order (`rn`, `global`, `v4`, `lt`, …).
    pub mods: Vec<String>,
    /// The type suffixes, in order (`cvt.f32.bf16` gives `[F32, BF16]`).
    pub types: Vec<Ty>,
    pub operands: Vec<Operand>,
    /// The source line, for error messages.
    pub text: String,
}

impl Inst {
    pub fn has(&self, modifier: &str) -> bool {
        self.mods.iter().any(|m| m == modifier)
    }

    /// The last type suffix, the one most instructions compute in.
    pub fn ty(&self) -> Result<Ty, String> {
        self.types
            .last()
            .copied()
            .ok_or_else(|| format!("`{}` has no type suffix", self.text))
    }
}

/// A `.shared` array of a kernel.
#[derive(Debug, Clone)]
pub struct SharedVar {
    pub name: String,
    /// Byte offset inside the CTA's shared memory window.
    pub offset: usize,
    /// `None` for `.extern` (dynamic) shared memory, sized at launch.
    pub bytes: Option<usize>,
}

/// One `.entry` kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: String,
    /// `(name, type)` of each parameter, in order.
    pub params: Vec<(String, Ty)>,
    pub register_count: usize,
    pub shared: Vec<SharedVar>,
    /// Bytes of static shared memory (the dynamic window starts here).
    pub static_shared_bytes: usize,
    pub body: Vec<Inst>,
    pub labels: HashMap<String, usize>,
}

/// A parsed PTX module: its kernels by name.
#[derive(Debug, Clone)]
pub struct Module {
    pub kernels: HashMap<String, Kernel>,
}

/// Removes `//` and `/* */` comments.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Splits at `sep` outside of `{}` / `[]` / `()`.
fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$' || c == '%')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn parse_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let digits = digits.strip_suffix('U').unwrap_or(digits);
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()? as i64
    } else {
        digits.parse::<i64>().ok()?
    };
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

fn parse_imm(s: &str) -> Option<Imm> {
    if let Some(hex) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        return u32::from_str_radix(hex, 16).ok().map(Imm::F32Bits);
    }
    if let Some(hex) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        return u64::from_str_radix(hex, 16).ok().map(Imm::F64Bits);
    }
    if let Some(i) = parse_int(s) {
        return Some(Imm::Int(i));
    }
    if s.contains('.') || s.contains('e') {
        return s.parse::<f64>().ok().map(Imm::Float);
    }
    None
}

fn parse_special(s: &str) -> Option<Special> {
    let axis = |suffix: &str| match suffix {
        "x" => Some(0),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    let (name, suffix) = s.split_once('.').unwrap_or((s, ""));
    Some(match name {
        "%tid" => Special::Tid(axis(suffix)?),
        "%ntid" => Special::Ntid(axis(suffix)?),
        "%ctaid" => Special::Ctaid(axis(suffix)?),
        "%nctaid" => Special::Nctaid(axis(suffix)?),
        "%laneid" => Special::LaneId,
        "%warpid" => Special::WarpId,
        _ => return None,
    })
}

/// Parses the inside of `[...]`: `%rd1`, `%rd1+16`, `sym`, `sym+4`, `%r2-8`, `1024`.
fn parse_address(inner: &str, registers: &HashMap<String, usize>) -> Result<Operand, String> {
    let inner: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let split = inner[1..].find(['+', '-']).map(|i| i + 1);
    let (base, offset) = match split {
        Some(i) => {
            let sign = if &inner[i..i + 1] == "-" { -1 } else { 1 };
            let offset = parse_int(&inner[i + 1..])
                .ok_or_else(|| format!("bad address offset in [{inner}]"))?;
            (&inner[..i], sign * offset)
        }
        None => (inner.as_str(), 0),
    };
    let base = if base.starts_with('%') {
        Base::Reg(
            *registers
                .get(base)
                .ok_or_else(|| format!("undeclared register {base} in [{inner}]"))?,
        )
    } else if let Some(absolute) = parse_int(base) {
        return Ok(Operand::Address {
            base: Base::Absolute,
            offset: absolute + offset,
        });
    } else {
        Base::Symbol(base.to_string())
    };
    Ok(Operand::Address { base, offset })
}

fn parse_operand(s: &str, registers: &HashMap<String, usize>) -> Result<Operand, String> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        return split_top_level(inner, ',')
            .into_iter()
            .map(|part| parse_operand(part, registers))
            .collect::<Result<_, _>>()
            .map(Operand::Vector);
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return parse_address(inner, registers);
    }
    if let Some(&index) = registers.get(s) {
        return Ok(Operand::Reg(index));
    }
    if let Some(special) = parse_special(s) {
        return Ok(Operand::Special(special));
    }
    if s.starts_with('%') {
        return Err(format!("undeclared register {s}"));
    }
    if let Some(imm) = parse_imm(s) {
        return Ok(Operand::Imm(imm));
    }
    if is_identifier(s) {
        return Ok(Operand::Symbol(s.to_string()));
    }
    Err(format!("cannot read operand `{s}`"))
}

/// Declares the registers of `.reg .f32 %f<8>, %x;` (the `<N>` form declares `%f0..%f7`).
fn declare_registers(decl: &str, registers: &mut HashMap<String, usize>) -> Result<(), String> {
    let rest = decl.trim_start_matches(".reg").trim();
    let (_ty, names) = rest
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("bad register declaration `{decl}`"))?;
    for name in names.split(',').map(str::trim) {
        if let Some((prefix, count)) = name.split_once('<') {
            let count: usize = count
                .trim_end_matches('>')
                .parse()
                .map_err(|_| format!("bad register range `{name}`"))?;
            for i in 0..count {
                let next = registers.len();
                registers.insert(format!("{prefix}{i}"), next);
            }
        } else {
            let next = registers.len();
            registers.insert(name.to_string(), next);
        }
    }
    Ok(())
}

/// `.shared .align 16 .b8 tile[4096]` or `.extern .shared .align 16 .b8 dynamic[]`.
fn declare_shared(decl: &str, kernel: &mut Kernel) -> Result<(), String> {
    let words: Vec<&str> = decl.split_whitespace().collect();
    let align = words
        .iter()
        .position(|w| *w == ".align")
        .and_then(|i| words.get(i + 1))
        .and_then(|a| a.parse::<usize>().ok())
        .unwrap_or(4);
    let element = words
        .iter()
        .rev()
        .skip(1)
        .find_map(|w| w.strip_prefix('.').and_then(Ty::parse))
        .ok_or_else(|| format!("shared declaration without a type: `{decl}`"))?;
    let last = words.last().copied().unwrap_or_default();
    let (name, count) = last
        .split_once('[')
        .ok_or_else(|| format!("shared declaration without [size]: `{decl}`"))?;
    let count = count.trim_end_matches(']');
    let offset = kernel.static_shared_bytes.div_ceil(align) * align;
    let bytes = if count.is_empty() {
        None
    } else {
        let n: usize = count
            .parse()
            .map_err(|_| format!("bad shared size in `{decl}`"))?;
        Some(n * element.bytes())
    };
    if let Some(bytes) = bytes {
        kernel.static_shared_bytes = offset + bytes;
    }
    kernel.shared.push(SharedVar {
        name: name.to_string(),
        offset,
        bytes,
    });
    Ok(())
}

fn parse_instruction(stmt: &str, registers: &HashMap<String, usize>) -> Result<Inst, String> {
    let mut rest = stmt.trim();
    let mut guard = None;
    if let Some(after) = rest.strip_prefix('@') {
        let (pred, tail) = after
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("guard without instruction: `{stmt}`"))?;
        let (negated, name) = match pred.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, pred),
        };
        let reg = *registers
            .get(name)
            .ok_or_else(|| format!("undeclared predicate {name} in `{stmt}`"))?;
        guard = Some((reg, negated));
        rest = tail.trim();
    }
    let (opcode_full, operand_text) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let mut pieces = opcode_full.split('.');
    let opcode = pieces.next().unwrap_or_default().to_string();
    let mut mods = Vec::new();
    let mut types = Vec::new();
    for piece in pieces {
        match Ty::parse(piece) {
            Some(ty) => types.push(ty),
            None => mods.push(piece.to_string()),
        }
    }
    let operands = if operand_text.trim().is_empty() {
        Vec::new()
    } else {
        split_top_level(operand_text, ',')
            .into_iter()
            .map(|o| parse_operand(o, registers))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{e} in `{stmt}`"))?
    };
    Ok(Inst {
        guard,
        opcode,
        mods,
        types,
        operands,
        text: stmt.split_whitespace().collect::<Vec<_>>().join(" "),
    })
}

/// Parses `name( .param .u64 a, .param .u32 n )`.
fn parse_params(list: &str) -> Result<Vec<(String, Ty)>, String> {
    let mut params = Vec::new();
    for decl in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let words: Vec<&str> = decl.split_whitespace().collect();
        let ty = words
            .iter()
            .filter_map(|w| w.strip_prefix('.').and_then(Ty::parse))
            .next_back()
            .ok_or_else(|| format!("parameter without a type: `{decl}`"))?;
        let name = words
            .last()
            .ok_or_else(|| format!("empty parameter `{decl}`"))?;
        params.push((name.to_string(), ty));
    }
    Ok(params)
}

/// Parses one `.entry`; `module_shared` are the module-scope `.shared` declarations above it
/// (shared by every kernel of the module, laid out first).
fn parse_kernel(header: &str, body: &str, module_shared: &[String]) -> Result<Kernel, String> {
    let open = header
        .find('(')
        .ok_or_else(|| format!("kernel header without parameters: `{header}`"))?;
    let close = header
        .rfind(')')
        .ok_or_else(|| format!("unclosed parameter list: `{header}`"))?;
    let name = header[..open]
        .split_whitespace()
        .last()
        .ok_or("kernel without a name")?
        .to_string();
    let mut kernel = Kernel {
        name,
        params: parse_params(&header[open + 1..close])?,
        register_count: 0,
        shared: Vec::new(),
        static_shared_bytes: 0,
        body: Vec::new(),
        labels: HashMap::new(),
    };
    for decl in module_shared {
        declare_shared(decl, &mut kernel).map_err(|e| format!("kernel {}: {e}", kernel.name))?;
    }
    let mut registers = HashMap::new();
    for stmt in body.split(';') {
        let mut stmt = stmt.trim();
        // Leading labels: `LOOP: add...` or a bare `DONE:`.
        while let Some(colon) = stmt.find(':') {
            let label = stmt[..colon].trim();
            if !is_identifier(label) || label.starts_with('%') {
                break;
            }
            kernel.labels.insert(label.to_string(), kernel.body.len());
            stmt = stmt[colon + 1..].trim();
        }
        if stmt.is_empty() {
            continue;
        }
        if stmt.starts_with(".reg") {
            declare_registers(stmt, &mut registers)
                .map_err(|e| format!("kernel {}: {e}", kernel.name))?;
        } else if stmt.starts_with(".shared") || stmt.starts_with(".extern") {
            declare_shared(stmt, &mut kernel)
                .map_err(|e| format!("kernel {}: {e}", kernel.name))?;
        } else if stmt.starts_with('.') {
            // Performance directives inside a body (`.pragma`, …) do not change semantics.
        } else {
            let inst = parse_instruction(stmt, &registers)
                .map_err(|e| format!("kernel {}: {e}", kernel.name))?;
            kernel.body.push(inst);
        }
    }
    kernel.register_count = registers.len();
    for inst in &kernel.body {
        if inst.opcode == "bra" {
            match inst.operands.first() {
                Some(Operand::Symbol(label)) if kernel.labels.contains_key(label) => {}
                _ => {
                    return Err(format!(
                        "kernel {}: branch to an unknown label in `{}`",
                        kernel.name, inst.text
                    ))
                }
            }
        }
    }
    Ok(kernel)
}

/// Parses a PTX module. Errors name the kernel and the statement that could not be read.
pub fn parse_module(source: &str) -> Result<Module, String> {
    let text = strip_comments(source);
    let mut kernels = HashMap::new();
    let mut module_shared = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(".entry") {
        // Module-scope declarations between the previous kernel and this one.
        let (outside, _) = rest[..start].rsplit_once(';').unwrap_or(("", ""));
        module_shared.extend(outside.split(';').map(str::trim).filter_map(|stmt| {
            let at = stmt.find(".extern").or_else(|| stmt.find(".shared"))?;
            stmt[at..]
                .contains(".shared")
                .then(|| stmt[at..].to_string())
        }));
        let open = rest[start..]
            .find('{')
            .map(|i| start + i)
            .ok_or("`.entry` without a body")?;
        let mut depth = 0;
        let mut close = None;
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close.ok_or("unclosed kernel body")?;
        let kernel = parse_kernel(&rest[start..open], &rest[open + 1..close], &module_shared)?;
        kernels.insert(kernel.name.clone(), kernel);
        rest = &rest[close + 1..];
    }
    if kernels.is_empty() {
        return Err("no `.entry` kernel in the module".to_string());
    }
    Ok(Module { kernels })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        .version 8.0
        .target sm_80
        .address_size 64
        // a comment
        .visible .entry scale(
            .param .u64 out,
            .param .f32 factor
        )
        {
            .reg .pred %p<2>;
            .reg .b32 %r<3>;
            .reg .f32 %f<2>;
            .reg .b64 %rd<2>;
            .shared .align 16 .b8 tile[64];
            mov.u32 %r0, %tid.x; /* inline */
            setp.ge.u32 %p0, %r0, 16;
            @%p0 bra DONE;
            ld.param.u64 %rd0, [out];
            ld.global.v2.f32 {%f0, %f1}, [%rd0+8];
            mul.rn.f32 %f0, %f0, 0f40000000;
        DONE:
            ret;
        }
    "#;

    #[test]
    fn parses_a_kernel_with_registers_labels_and_operands() {
        let module = parse_module(SAMPLE).unwrap();
        let kernel = &module.kernels["scale"];
        assert_eq!(kernel.params.len(), 2);
        assert_eq!(kernel.params[1], ("factor".to_string(), Ty::F32));
        assert_eq!(kernel.register_count, 2 + 3 + 2 + 2);
        assert_eq!(kernel.static_shared_bytes, 64);
        assert_eq!(kernel.body.len(), 7);
        assert_eq!(kernel.labels["DONE"], 6);
        let branch = &kernel.body[2];
        assert_eq!(branch.guard, Some((0, false)));
        let load = &kernel.body[4];
        assert!(load.has("global") && load.has("v2"));
        assert_eq!(load.types, vec![Ty::F32]);
        assert!(matches!(load.operands[0], Operand::Vector(ref v) if v.len() == 2));
        assert!(matches!(
            load.operands[1],
            Operand::Address {
                base: Base::Reg(_),
                offset: 8
            }
        ));
        assert_eq!(
            kernel.body[5].operands[2],
            Operand::Imm(Imm::F32Bits(0x4000_0000))
        );
    }

    #[test]
    fn undeclared_registers_and_unknown_labels_are_errors() {
        let bad_reg = SAMPLE.replace("%r0, %tid.x", "%r9, %tid.x");
        assert!(parse_module(&bad_reg).unwrap_err().contains("%r9"));
        let bad_label = SAMPLE.replace("bra DONE", "bra NOWHERE");
        assert!(parse_module(&bad_label)
            .unwrap_err()
            .contains("unknown label"));
        assert!(parse_module(".version 8.0").is_err());
    }
}
