//! Executes one kernel launch, CTA by CTA, thread by thread.
//!
//! Scheduling: every thread of a CTA runs until it reaches a barrier (`bar.sync`), a warp-wide
//! instruction (`shfl.sync`, `ldmatrix`, `mma.sync`) or its end. `cp.async` copies land in
//! shared memory only when a `cp.async.wait_group` lets their group complete, so reading a tile
//! before waiting for it is caught. A warp-wide instruction runs
//! once all 32 lanes of the warp wait at it; a barrier releases once every thread of the CTA
//! waits at it. Anything else — a lane that exited before a barrier, lanes of one warp at
//! different warp-wide instructions — is reported as the divergence bug it is on hardware.
//! Within a barrier interval the order of threads is arbitrary, which is why shared memory
//! checks for races instead of trusting the order the emulator picked.

use std::collections::VecDeque;

use super::memory::{GlobalMemory, SharedMemory};
use super::parse::{Base, Imm, Inst, Kernel, Operand, Special, Ty};

/// Grid and block shape of a launch, and the bytes of dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared_bytes: u32,
}

const WARP: usize = 32;
/// A thread running more instructions than this is stuck in a loop.
const STEP_LIMIT: u64 = 200_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    AtBarrier,
    AtWarpCollective,
    Exited,
}

struct Thread {
    pc: usize,
    regs: Vec<u64>,
    state: State,
    tid: [u32; 3],
    steps: u64,
    /// cp.async copies issued but not yet committed to a group.
    uncommitted: Vec<AsyncCopy>,
    /// Committed cp.async groups, oldest first: they land in shared memory only when a
    /// `cp.async.wait_group` (or the thread's end) lets them.
    in_flight: VecDeque<Vec<AsyncCopy>>,
}

/// A cp.async copy in flight: the bytes read from global memory at issue, and where in shared
/// memory they land.
struct AsyncCopy {
    shared_address: u64,
    bytes: Vec<u8>,
}

/// One CTA in flight.
struct Cta<'a> {
    kernel: &'a Kernel,
    dims: LaunchDims,
    ctaid: [u32; 3],
    params: &'a [u64],
    global: &'a mut GlobalMemory,
    shared: SharedMemory,
    threads: Vec<Thread>,
}

/// What one instruction did to its thread.
enum Flow {
    Next,
    Jump(usize),
    Barrier,
    WarpCollective,
    Exit,
}

fn mask(bits: u64, bytes: usize) -> u64 {
    if bytes >= 8 {
        bits
    } else {
        bits & ((1u64 << (bytes * 8)) - 1)
    }
}

fn sign_extend(bits: u64, bytes: usize) -> i64 {
    let shift = 64 - 8 * bytes as u32;
    ((bits << shift) as i64) >> shift
}

fn f32_of(bits: u64) -> f32 {
    f32::from_bits(bits as u32)
}

fn bits_f32(x: f32) -> u64 {
    x.to_bits() as u64
}

/// Round-to-nearest-even f32 → bf16 (`cvt.rn.bf16.f32`); NaN stays NaN.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FC0;
    }
    let bits = x.to_bits();
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    ((bits + rounding) >> 16) as u16
}

fn bf16_to_f32(bits: u64) -> f32 {
    f32::from_bits(((bits as u32) & 0xFFFF) << 16)
}

fn f16_to_f32(bits: u64) -> f32 {
    half::f16::from_bits(bits as u16).to_f32()
}

/// Reads a value as f64 for conversions, according to its type.
fn to_f64(bits: u64, ty: Ty) -> f64 {
    match ty {
        Ty::F32 => f32_of(bits) as f64,
        Ty::F64 => f64::from_bits(bits),
        Ty::BF16 => bf16_to_f32(bits) as f64,
        Ty::F16 => f16_to_f32(bits) as f64,
        t if t.is_signed() => sign_extend(bits, t.bytes()) as f64,
        t => mask(bits, t.bytes()) as f64,
    }
}

/// The integer rounding modes of `cvt`: `.rni` nearest even, `.rmi` down, `.rpi` up, `.rzi`
/// toward zero. Without one (a float → float `cvt.rn`) the value is kept.
fn round_integer(inst: &Inst, value: f64) -> f64 {
    if inst.has("rni") {
        value.round_ties_even()
    } else if inst.has("rmi") {
        value.floor()
    } else if inst.has("rpi") {
        value.ceil()
    } else if inst.has("rzi") {
        value.trunc()
    } else {
        value
    }
}

/// `cvt` with the rounding modes of PTX ISA §9.7.9.21 that our kernels use.
fn convert(inst: &Inst, bits: u64, dst: Ty, src: Ty) -> Result<u64, String> {
    if dst.is_float() {
        let mut value = to_f64(bits, src);
        if src.is_float() {
            // Float → float with an integer rounding mode rounds to an integral value.
            value = round_integer(inst, value);
        }
        return Ok(match dst {
            Ty::F32 => bits_f32(value as f32),
            Ty::F64 => value.to_bits(),
            Ty::BF16 => f32_to_bf16_bits(value as f32) as u64,
            Ty::F16 => half::f16::from_f32(value as f32).to_bits() as u64,
            _ => unreachable!(),
        });
    }
    if src.is_float() {
        let rounded = round_integer(inst, to_f64(bits, src));
        // Float → integer saturates; NaN becomes 0 (PTX ISA, cvt).
        let rounded = if rounded.is_nan() { 0.0 } else { rounded };
        let bytes = dst.bytes();
        return Ok(if dst.is_signed() {
            let lo = -(2f64.powi(8 * bytes as i32 - 1));
            mask(rounded.clamp(lo, -lo - 1.0) as i64 as u64, bytes)
        } else {
            rounded.clamp(0.0, 2f64.powi(8 * bytes as i32) - 1.0) as u64
        });
    }
    // Integer ↔ integer: sign- or zero-extend from the source, then truncate.
    let value = if src.is_signed() {
        sign_extend(bits, src.bytes()) as u64
    } else {
        mask(bits, src.bytes())
    };
    Ok(mask(value, dst.bytes()))
}

fn float_binary(op: &str, a: f64, b: f64) -> Option<f64> {
    Some(match op {
        "add" => a + b,
        "sub" => a - b,
        "mul" => a * b,
        "div" => a / b,
        // PTX min/max return the other operand when one is NaN.
        "min" => a.min(b),
        "max" => a.max(b),
        _ => return None,
    })
}

fn compare(cmp: &str, ty: Ty, a: u64, b: u64) -> Result<bool, String> {
    if ty.is_float() {
        let (x, y) = (to_f64(a, ty), to_f64(b, ty));
        let unordered = x.is_nan() || y.is_nan();
        return Ok(match cmp {
            "eq" => x == y,
            "ne" => x != y && !unordered,
            "lt" => x < y,
            "le" => x <= y,
            "gt" => x > y,
            "ge" => x >= y,
            "equ" => unordered || x == y,
            "neu" => x != y,
            "ltu" => unordered || x < y,
            "leu" => unordered || x <= y,
            "gtu" => unordered || x > y,
            "geu" => unordered || x >= y,
            "num" => !unordered,
            "nan" => unordered,
            _ => return Err(format!("unknown float comparison .{cmp}")),
        });
    }
    let bytes = ty.bytes();
    let (ua, ub) = (mask(a, bytes), mask(b, bytes));
    let (sa, sb) = (sign_extend(a, bytes), sign_extend(b, bytes));
    let signed = ty.is_signed();
    Ok(match cmp {
        "eq" => ua == ub,
        "ne" => ua != ub,
        "lt" if signed => sa < sb,
        "le" if signed => sa <= sb,
        "gt" if signed => sa > sb,
        "ge" if signed => sa >= sb,
        "lt" | "lo" => ua < ub,
        "le" | "ls" => ua <= ub,
        "gt" | "hi" => ua > ub,
        "ge" | "hs" => ua >= ub,
        _ => return Err(format!("unknown integer comparison .{cmp}")),
    })
}

impl<'a> Cta<'a> {
    fn special(&self, thread: usize, special: Special) -> u64 {
        let t = &self.threads[thread];
        let linear = self.linear_tid(t.tid);
        match special {
            Special::Tid(axis) => t.tid[axis] as u64,
            Special::Ntid(axis) => self.dims.block[axis] as u64,
            Special::Ctaid(axis) => self.ctaid[axis] as u64,
            Special::Nctaid(axis) => self.dims.grid[axis] as u64,
            Special::LaneId => (linear % WARP) as u64,
            Special::WarpId => (linear / WARP) as u64,
        }
    }

    fn linear_tid(&self, tid: [u32; 3]) -> usize {
        let [bx, by, _] = self.dims.block;
        (tid[0] + bx * (tid[1] + by * tid[2])) as usize
    }

    fn shared_symbol(&self, name: &str) -> Option<u64> {
        self.kernel
            .shared
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.offset as u64)
    }

    /// The value of an operand read as type `ty` (its bits, masked to the type's width).
    fn read(&self, thread: usize, operand: &Operand, ty: Ty) -> Result<u64, String> {
        let bytes = ty.bytes();
        Ok(match operand {
            Operand::Reg(r) => mask(self.threads[thread].regs[*r], bytes),
            Operand::Imm(imm) => match (imm, ty) {
                (Imm::F32Bits(b), Ty::F64) => (f32::from_bits(*b) as f64).to_bits(),
                (Imm::F32Bits(b), _) => *b as u64,
                (Imm::F64Bits(b), Ty::F32) => bits_f32(f64::from_bits(*b) as f32),
                (Imm::F64Bits(b), _) => *b,
                (Imm::Float(f), Ty::F32) => bits_f32(*f as f32),
                (Imm::Float(f), Ty::F64) => f.to_bits(),
                (Imm::Float(f), _) => mask(*f as i64 as u64, bytes),
                (Imm::Int(i), Ty::F32) => bits_f32(*i as f32),
                (Imm::Int(i), Ty::F64) => (*i as f64).to_bits(),
                (Imm::Int(i), _) => mask(*i as u64, bytes),
            },
            Operand::Special(s) => self.special(thread, *s),
            Operand::Symbol(name) => self
                .shared_symbol(name)
                .ok_or_else(|| format!("`{name}` is not a shared variable"))?,
            Operand::Vector(parts) => {
                // `mov.b32 %r, {%h0, %h1}` packs equal-width pieces, first piece lowest.
                let piece = bytes / parts.len();
                let piece_ty = match piece {
                    1 => Ty::B8,
                    2 => Ty::B16,
                    4 => Ty::B32,
                    _ => return Err("cannot pack this vector".into()),
                };
                let mut value = 0;
                for (i, part) in parts.iter().enumerate() {
                    value |= self.read(thread, part, piece_ty)? << (8 * piece * i);
                }
                value
            }
            Operand::Address { .. } => return Err("an address is not a value".into()),
        })
    }

    fn write(
        &mut self,
        thread: usize,
        operand: &Operand,
        ty: Ty,
        value: u64,
    ) -> Result<(), String> {
        match operand {
            Operand::Reg(r) => {
                self.threads[thread].regs[*r] = mask(value, ty.bytes());
                Ok(())
            }
            Operand::Vector(parts) => {
                let piece = ty.bytes() / parts.len();
                let piece_ty = if piece == 2 { Ty::B16 } else { Ty::B32 };
                for (i, part) in parts.iter().enumerate() {
                    self.write(thread, part, piece_ty, value >> (8 * piece * i))?;
                }
                Ok(())
            }
            _ => Err("destination is not a register".into()),
        }
    }

    /// Resolves `[base+offset]` to an address in the instruction's state space.
    fn address(&self, thread: usize, operand: &Operand) -> Result<u64, String> {
        let Operand::Address { base, offset } = operand else {
            return Err("expected an address operand [..]".into());
        };
        let base = match base {
            Base::Reg(r) => self.threads[thread].regs[*r],
            Base::Absolute => 0,
            Base::Symbol(name) => self
                .shared_symbol(name)
                .ok_or_else(|| format!("`{name}` is not a shared variable"))?,
        };
        Ok(base.wrapping_add(*offset as u64))
    }

    fn load(
        &mut self,
        thread: usize,
        space: &str,
        address: u64,
        len: usize,
    ) -> Result<u64, String> {
        let bytes = match space {
            "global" => self.global.read(address, len)?.to_vec(),
            "shared" => self.shared.read(address, len, thread as u32)?.to_vec(),
            other => return Err(format!("loads from .{other} are not emulated")),
        };
        let mut value = [0u8; 8];
        value[..len].copy_from_slice(&bytes);
        Ok(u64::from_le_bytes(value))
    }

    fn store(
        &mut self,
        thread: usize,
        space: &str,
        address: u64,
        len: usize,
        value: u64,
    ) -> Result<(), String> {
        let bytes = &value.to_le_bytes()[..len];
        match space {
            "global" => self.global.write(address, bytes),
            "shared" => self.shared.write(address, bytes, thread as u32),
            other => Err(format!("stores to .{other} are not emulated")),
        }
    }

    fn space(inst: &Inst) -> &'static str {
        if inst.has("shared") {
            "shared"
        } else if inst.has("param") {
            "param"
        } else if inst.has("global") {
            "global"
        } else {
            "generic"
        }
    }

    fn vector_width(inst: &Inst) -> usize {
        if inst.has("v4") {
            4
        } else if inst.has("v2") {
            2
        } else {
            1
        }
    }

    fn param(&self, operand: &Operand) -> Result<u64, String> {
        match operand {
            Operand::Address {
                base: Base::Symbol(name),
                offset: 0,
            } => self
                .kernel
                .params
                .iter()
                .position(|(p, _)| p == name)
                .map(|i| self.params[i])
                .ok_or_else(|| format!("unknown parameter `{name}`")),
            _ => Err("ld.param needs [parameter_name]".into()),
        }
    }

    /// Executes one instruction of a thread (not a warp-wide one).
    fn step(&mut self, thread: usize) -> Result<Flow, String> {
        let kernel = self.kernel;
        let pc = self.threads[thread].pc;
        let Some(inst) = kernel.body.get(pc) else {
            self.land_all_copies(thread)?;
            return Ok(Flow::Exit);
        };
        if let Some((pred, negated)) = inst.guard {
            let set = self.threads[thread].regs[pred] != 0;
            if set == negated {
                return Ok(Flow::Next);
            }
        }
        let ops = &inst.operands;
        let op = inst.opcode.as_str();
        match op {
            "bra" => {
                let Some(Operand::Symbol(label)) = ops.first() else {
                    unreachable!("checked by the parser")
                };
                return Ok(Flow::Jump(kernel.labels[label]));
            }
            "ret" | "exit" => {
                self.land_all_copies(thread)?;
                return Ok(Flow::Exit);
            }
            "bar" | "barrier" => return Ok(Flow::Barrier),
            "shfl" | "ldmatrix" | "mma" => {
                if inst.guard.is_some() {
                    return Err("warp-wide instructions must not be predicated".into());
                }
                return Ok(Flow::WarpCollective);
            }
            _ => {}
        }
        let arg = |i: usize| ops.get(i).ok_or_else(|| format!("missing operand {i}"));
        match op {
            "mov" => {
                let ty = inst.ty()?;
                let value = self.read(thread, arg(1)?, ty)?;
                self.write(thread, arg(0)?, ty, value)?;
            }
            "ld" => {
                let ty = inst.ty()?;
                let space = Self::space(inst);
                if space == "param" {
                    let value = self.param(arg(1)?)?;
                    self.write(thread, arg(0)?, ty, value)?;
                } else {
                    let address = self.address(thread, arg(1)?)?;
                    let dsts: Vec<Operand> = match arg(0)? {
                        Operand::Vector(v) => v.clone(),
                        single => vec![single.clone()],
                    };
                    if dsts.len() != Self::vector_width(inst) {
                        return Err("vector width does not match the destination".into());
                    }
                    if address % (ty.bytes() * dsts.len()) as u64 != 0 {
                        return Err(format!("misaligned {space} load at 0x{address:x}"));
                    }
                    for (i, dst) in dsts.iter().enumerate() {
                        let at = address + (i * ty.bytes()) as u64;
                        let value = self.load(thread, space, at, ty.bytes())?;
                        self.write(thread, dst, ty, value)?;
                    }
                }
            }
            "st" => {
                let ty = inst.ty()?;
                let space = Self::space(inst);
                let address = self.address(thread, arg(0)?)?;
                let srcs: Vec<Operand> = match arg(1)? {
                    Operand::Vector(v) => v.clone(),
                    single => vec![single.clone()],
                };
                if address % (ty.bytes() * srcs.len()) as u64 != 0 {
                    return Err(format!("misaligned {space} store at 0x{address:x}"));
                }
                for (i, src) in srcs.iter().enumerate() {
                    let value = self.read(thread, src, ty)?;
                    let at = address + (i * ty.bytes()) as u64;
                    self.store(thread, space, at, ty.bytes(), value)?;
                }
            }
            "cp" => self.cp_async(thread, inst)?,
            "cvt" => {
                if inst.types.first() == Some(&Ty::BF16x2) {
                    // cvt.rn.bf16x2.f32 d, a, b: a goes to the upper half, b to the lower.
                    let hi = f32_to_bf16_bits(f32_of(self.read(thread, arg(1)?, Ty::F32)?));
                    let lo = f32_to_bf16_bits(f32_of(self.read(thread, arg(2)?, Ty::F32)?));
                    let packed = ((hi as u64) << 16) | lo as u64;
                    self.write(thread, arg(0)?, Ty::B32, packed)?;
                } else {
                    let [dst, src] = inst.types[..] else {
                        return Err("cvt needs a destination and a source type".into());
                    };
                    let value = self.read(thread, arg(1)?, src)?;
                    let converted = convert(inst, value, dst, src)?;
                    self.write(thread, arg(0)?, dst, converted)?;
                }
            }
            "setp" => {
                let ty = inst.ty()?;
                let cmp = inst.mods.first().ok_or("setp without a comparison")?;
                let a = self.read(thread, arg(1)?, ty)?;
                let b = self.read(thread, arg(2)?, ty)?;
                let result = compare(cmp, ty, a, b)?;
                self.write(thread, arg(0)?, Ty::Pred, result as u64)?;
            }
            "selp" => {
                let ty = inst.ty()?;
                let chosen = if self.read(thread, arg(3)?, Ty::Pred)? != 0 {
                    arg(1)?
                } else {
                    arg(2)?
                };
                let value = self.read(thread, chosen, ty)?;
                self.write(thread, arg(0)?, ty, value)?;
            }
            "and" | "or" | "xor" => {
                let ty = inst.ty()?;
                let a = self.read(thread, arg(1)?, ty)?;
                let b = self.read(thread, arg(2)?, ty)?;
                let value = match op {
                    "and" => a & b,
                    "or" => a | b,
                    _ => a ^ b,
                };
                self.write(thread, arg(0)?, ty, value)?;
            }
            "not" => {
                let ty = inst.ty()?;
                let a = self.read(thread, arg(1)?, ty)?;
                let value = if ty == Ty::Pred { (a == 0) as u64 } else { !a };
                self.write(thread, arg(0)?, ty, value)?;
            }
            "shl" | "shr" => {
                let ty = inst.ty()?;
                let bits = 8 * ty.bytes() as u64;
                let a = self.read(thread, arg(1)?, ty)?;
                let shift = self.read(thread, arg(2)?, Ty::U32)?.min(bits);
                let value = match (op, ty.is_signed()) {
                    ("shl", _) if shift >= bits => 0,
                    ("shl", _) => a << shift,
                    (_, true) => (sign_extend(a, ty.bytes()) >> shift.min(63)) as u64,
                    _ if shift >= bits => 0,
                    _ => a >> shift,
                };
                self.write(thread, arg(0)?, ty, value)?;
            }
            "add" | "sub" | "mul" | "div" | "rem" | "min" | "max" | "mad" | "fma" => {
                self.arithmetic(thread, inst)?
            }
            "neg" | "abs" | "ex2" | "lg2" | "rcp" | "sqrt" | "rsqrt" | "tanh" | "sin" | "cos" => {
                let ty = inst.ty()?;
                let a = self.read(thread, arg(1)?, ty)?;
                let value = if ty.is_float() {
                    let x = to_f64(a, ty);
                    let y = match op {
                        "neg" => -x,
                        "abs" => x.abs(),
                        "ex2" => x.exp2(),
                        "lg2" => x.log2(),
                        "rcp" => 1.0 / x,
                        "sqrt" => x.sqrt(),
                        "rsqrt" => 1.0 / x.sqrt(),
                        "tanh" => x.tanh(),
                        "sin" => x.sin(),
                        _ => x.cos(),
                    };
                    if ty == Ty::F64 {
                        y.to_bits()
                    } else {
                        bits_f32(y as f32)
                    }
                } else {
                    let x = sign_extend(a, ty.bytes());
                    match op {
                        "neg" => x.wrapping_neg() as u64,
                        "abs" => x.wrapping_abs() as u64,
                        _ => return Err(format!("{op} needs a float type")),
                    }
                };
                self.write(thread, arg(0)?, ty, value)?;
            }
            "atom" | "red" => self.atomic(thread, inst)?,
            other => return Err(format!("the emulator does not implement `{other}`")),
        }
        Ok(Flow::Next)
    }

    fn arithmetic(&mut self, thread: usize, inst: &Inst) -> Result<(), String> {
        let ty = inst.ty()?;
        let ops = &inst.operands;
        let op = inst.opcode.as_str();
        let get = |i: usize| ops.get(i).ok_or_else(|| format!("missing operand {i}"));
        let a = self.read(thread, get(1)?, ty)?;
        let b = self.read(thread, get(2)?, ty)?;
        if ty.is_float() {
            let (x, y) = (to_f64(a, ty), to_f64(b, ty));
            let result = match op {
                "mad" | "fma" => {
                    let z = to_f64(self.read(thread, get(3)?, ty)?, ty);
                    if ty == Ty::F32 {
                        (x as f32).mul_add(y as f32, z as f32) as f64
                    } else {
                        x.mul_add(y, z)
                    }
                }
                // The remaining float ops round once to the type, as the hardware does.
                _ => float_binary(op, x, y).ok_or_else(|| format!("{op} is not a float op"))?,
            };
            let bits = if ty == Ty::F64 {
                result.to_bits()
            } else {
                bits_f32(result as f32)
            };
            return self.write(thread, get(0)?, ty, bits);
        }
        let bytes = ty.bytes();
        let signed = ty.is_signed();
        let wide = inst.has("wide");
        let widen = |v: u64| -> u64 {
            if signed {
                sign_extend(v, bytes) as u64
            } else {
                v
            }
        };
        let (dst_ty, x, y) = if wide {
            let dst_ty = match ty {
                Ty::U16 => Ty::U32,
                Ty::S16 => Ty::S32,
                Ty::U32 => Ty::U64,
                Ty::S32 => Ty::S64,
                _ => return Err(".wide needs a 16- or 32-bit type".into()),
            };
            (dst_ty, widen(a), widen(b))
        } else {
            (ty, a, b)
        };
        let value = match op {
            "add" => x.wrapping_add(y),
            "sub" => x.wrapping_sub(y),
            "mul" | "mad" => {
                let product = if inst.has("hi") {
                    let full = if signed {
                        (sign_extend(x, bytes) as i128 * sign_extend(y, bytes) as i128) as u128
                    } else {
                        x as u128 * y as u128
                    };
                    (full >> (8 * bytes)) as u64
                } else {
                    x.wrapping_mul(y)
                };
                if op == "mad" {
                    let c = self.read(thread, get(3)?, dst_ty)?;
                    product.wrapping_add(c)
                } else {
                    product
                }
            }
            "div" | "rem" => {
                if mask(y, bytes) == 0 {
                    return Err("integer division by zero".into());
                }
                match (op, signed) {
                    ("div", true) => {
                        sign_extend(x, bytes).wrapping_div(sign_extend(y, bytes)) as u64
                    }
                    ("rem", true) => {
                        sign_extend(x, bytes).wrapping_rem(sign_extend(y, bytes)) as u64
                    }
                    ("div", false) => mask(x, bytes) / mask(y, bytes),
                    _ => mask(x, bytes) % mask(y, bytes),
                }
            }
            "min" | "max" => {
                let less = if signed {
                    sign_extend(x, bytes) < sign_extend(y, bytes)
                } else {
                    mask(x, bytes) < mask(y, bytes)
                };
                if less == (op == "min") {
                    x
                } else {
                    y
                }
            }
            _ => return Err(format!("{op} is not an integer op")),
        };
        self.write(thread, get(0)?, dst_ty, value)
    }

    /// `atom.global.add.f32 old, [addr], v` and `red.global.add.f32 [addr], v` (also `max`,
    /// `min`, `exch`, integer types and `.shared`). Threads run one at a time, so atomicity is
    /// free; shared memory checks that no plain access meets the atomics between barriers.
    fn atomic(&mut self, thread: usize, inst: &Inst) -> Result<(), String> {
        let ty = inst.ty()?;
        let returns_old = inst.opcode == "atom";
        let (addr_op, value_op) = if returns_old { (1, 2) } else { (0, 1) };
        let address = self.address(thread, &inst.operands[addr_op])?;
        let space = Self::space(inst);
        let space = if space == "generic" { "global" } else { space };
        let v = self.read(thread, &inst.operands[value_op], ty)?;
        let kind = ["add", "max", "min", "exch"]
            .into_iter()
            .find(|k| inst.has(k))
            .ok_or("unsupported atomic operation")?;
        let combine = |old: u64| -> u64 {
            if kind == "exch" {
                v
            } else if ty.is_float() {
                let r = float_binary(kind, to_f64(old, ty), to_f64(v, ty)).unwrap_or_default();
                if ty == Ty::F64 {
                    r.to_bits()
                } else {
                    bits_f32(r as f32)
                }
            } else if kind == "add" {
                old.wrapping_add(v)
            } else {
                let less = if ty.is_signed() {
                    sign_extend(v, ty.bytes()) < sign_extend(old, ty.bytes())
                } else {
                    v < old
                };
                if less == (kind == "min") {
                    v
                } else {
                    old
                }
            }
        };
        let old = if space == "shared" {
            self.shared
                .atomic(address, ty.bytes(), thread as u32, combine)?
        } else {
            let old = self.load(thread, space, address, ty.bytes())?;
            self.store(thread, space, address, ty.bytes(), combine(old))?;
            old
        };
        if returns_old {
            self.write(thread, &inst.operands[0], ty, old)?;
        }
        Ok(())
    }

    /// `cp.async.{ca,cg}.shared.global [dst], [src], cp_size{, src_size}`: copies at once (the
    /// emulator has no latency to hide); bytes past `src_size` are zero-filled. The group
    /// commit/wait instructions have nothing left to wait for.
    /// `cp.async` copies, and their `commit_group` / `wait_group N` / `wait_all`. A copy reads
    /// global memory when issued but writes shared memory only when a wait lets its group land
    /// (all but the N most recent committed groups): a kernel that reads the tile before
    /// waiting for it sees the old bytes, and its test fails. For the race check the copy
    /// writes both at issue and at landing (it may land any time in between).
    fn cp_async(&mut self, thread: usize, inst: &Inst) -> Result<(), String> {
        if inst.has("commit_group") {
            let group = std::mem::take(&mut self.threads[thread].uncommitted);
            self.threads[thread].in_flight.push_back(group);
            return Ok(());
        }
        if inst.has("wait_all") {
            return self.land_all_copies(thread);
        }
        if inst.has("wait_group") {
            let keep = self.read(thread, &inst.operands[0], Ty::U32)? as usize;
            return self.land_copies(thread, keep);
        }
        let dst = self.address(thread, &inst.operands[0])?;
        let src = self.address(thread, &inst.operands[1])?;
        let size = self.read(thread, &inst.operands[2], Ty::U32)? as usize;
        if ![4, 8, 16].contains(&size) || dst % size as u64 != 0 || src % size as u64 != 0 {
            return Err(format!(
                "cp.async of {size} bytes needs 4/8/16 and aligned addresses"
            ));
        }
        let valid = match inst.operands.get(3) {
            Some(op) => (self.read(thread, op, Ty::U32)? as usize).min(size),
            None => size,
        };
        let mut bytes = vec![0u8; size];
        if valid > 0 {
            bytes[..valid].copy_from_slice(self.global.read(src, valid)?);
        }
        // The bytes may land any time until the wait: claimed now, written then.
        self.shared.claim_write(dst, size, thread as u32)?;
        self.threads[thread].uncommitted.push(AsyncCopy {
            shared_address: dst,
            bytes,
        });
        Ok(())
    }

    /// Commits and lands every copy of `thread` (`cp.async.wait_all`, and a thread's end).
    fn land_all_copies(&mut self, thread: usize) -> Result<(), String> {
        let group = std::mem::take(&mut self.threads[thread].uncommitted);
        self.threads[thread].in_flight.push_back(group);
        self.land_copies(thread, 0)
    }

    /// Writes the oldest committed cp.async groups of `thread` to shared memory until at most
    /// `keep` remain in flight (race-checked as this thread's writes, now).
    fn land_copies(&mut self, thread: usize, keep: usize) -> Result<(), String> {
        while self.threads[thread].in_flight.len() > keep {
            let group = self.threads[thread]
                .in_flight
                .pop_front()
                .expect("more groups than kept");
            for copy in group {
                self.shared
                    .write(copy.shared_address, &copy.bytes, thread as u32)?;
            }
        }
        Ok(())
    }

    /// Runs a warp-wide instruction for lanes `first..first + 32` that all wait at it.
    fn warp_collective(&mut self, first: usize) -> Result<(), String> {
        let inst = &self.kernel.body[self.threads[first].pc];
        match inst.opcode.as_str() {
            "shfl" => self.shuffle(first, inst),
            "ldmatrix" => self.ldmatrix(first, inst),
            "mma" => self.mma(first, inst),
            other => Err(format!("`{other}` is not warp-wide")),
        }
    }

    /// `shfl.sync.{up,down,bfly,idx}.b32 d, a, b, c, membermask` (PTX ISA §9.7.9.6): lane i
    /// reads `a` from lane j, with the clamp/segment rules of `c`.
    fn shuffle(&mut self, first: usize, inst: &Inst) -> Result<(), String> {
        let ops = &inst.operands;
        let values: Vec<u64> = (0..WARP)
            .map(|lane| self.read(first + lane, &ops[1], Ty::B32))
            .collect::<Result<_, _>>()?;
        for lane in 0..WARP {
            let t = first + lane;
            let b = self.read(t, &ops[2], Ty::U32)? as usize & 31;
            let c = self.read(t, &ops[3], Ty::U32)? as usize;
            let member_mask = self.read(t, &ops[4], Ty::U32)?;
            if member_mask != 0xFFFF_FFFF {
                return Err("the emulator supports full-warp shuffles only".into());
            }
            let segment = (c >> 8) & 31;
            let clamp = c & 31;
            let max_lane = (lane & segment) | (clamp & !segment);
            let min_lane = lane & segment;
            let (source, inside) = if inst.has("up") {
                let j = lane as isize - b as isize;
                (j, j >= max_lane as isize)
            } else if inst.has("down") {
                let j = (lane + b) as isize;
                (j, j <= max_lane as isize)
            } else if inst.has("bfly") {
                let j = (lane ^ b) as isize;
                (j, j <= max_lane as isize)
            } else {
                let j = (min_lane | (b & !segment)) as isize;
                (j, j <= max_lane as isize)
            };
            let source = if inside { source as usize } else { lane };
            self.write(t, &ops[0], Ty::B32, values[source])?;
        }
        Ok(())
    }

    /// `ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16 {d..}, [addr]` (PTX ISA
    /// §9.7.14.5.15): lanes 8m..8m+7 give the row addresses of 8×8 matrix m; afterwards lane l
    /// holds row l/4, columns 2(l%4) and 2(l%4)+1 of each matrix (of its transpose with .trans).
    fn ldmatrix(&mut self, first: usize, inst: &Inst) -> Result<(), String> {
        let count = if inst.has("x4") {
            4
        } else if inst.has("x2") {
            2
        } else {
            1
        };
        let mut rows = vec![[0u16; 8]; 8 * count];
        for (row_index, row) in rows.iter_mut().enumerate() {
            let t = first + row_index;
            let address = self.address(t, &inst.operands[1])?;
            if address % 16 != 0 {
                return Err(format!(
                    "ldmatrix row address {address} is not 16-byte aligned"
                ));
            }
            let bytes = self.shared.read(address, 16, t as u32)?;
            for (k, value) in row.iter_mut().enumerate() {
                *value = u16::from_le_bytes([bytes[2 * k], bytes[2 * k + 1]]);
            }
        }
        let Operand::Vector(dsts) = &inst.operands[0] else {
            return Err("ldmatrix needs a vector destination".into());
        };
        if dsts.len() != count {
            return Err("ldmatrix destination count does not match .x1/.x2/.x4".into());
        }
        let transposed = inst.has("trans");
        for lane in 0..WARP {
            for (m, dst) in dsts.iter().enumerate() {
                let matrix = &rows[8 * m..8 * m + 8];
                let (r, c) = (lane / 4, 2 * (lane % 4));
                let (lo, hi) = if transposed {
                    (matrix[c][r], matrix[c + 1][r])
                } else {
                    (matrix[r][c], matrix[r][c + 1])
                };
                let packed = ((hi as u64) << 16) | lo as u64;
                self.write(first + lane, dst, Ty::B32, packed)?;
            }
        }
        Ok(())
    }

    /// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 d, a, b, c` (PTX ISA
    /// §9.7.14.5.8, fragment layouts for m16n8k16): with g = lane/4 and t = lane%4, A register
    /// i holds row g + 8(i%2), columns 2t + 8(i/2) + {0,1}; B register i holds rows (k)
    /// 2t + 8i + {0,1} of column g; C/D element i is row g + 8(i/2), column 2t + i%2.
    fn mma(&mut self, first: usize, inst: &Inst) -> Result<(), String> {
        if !inst.has("m16n8k16") || inst.types.len() != 4 || inst.types[0] != Ty::F32 {
            return Err("the emulator supports mma.m16n8k16 with f32 accumulators only".into());
        }
        let input = inst.types[1];
        let element = |bits: u64| match input {
            Ty::BF16 => bf16_to_f32(bits),
            _ => f16_to_f32(bits),
        };
        let regs = |op: &Operand, n: usize| -> Result<Vec<Operand>, String> {
            match op {
                Operand::Vector(v) if v.len() == n => Ok(v.clone()),
                _ => Err(format!("mma operand needs {n} registers")),
            }
        };
        let (d, a, b, c) = (
            regs(&inst.operands[0], 4)?,
            regs(&inst.operands[1], 4)?,
            regs(&inst.operands[2], 2)?,
            regs(&inst.operands[3], 4)?,
        );
        let mut ma = [[0f32; 16]; 16];
        let mut mb = [[0f32; 8]; 16];
        let mut mc = [[0f32; 8]; 16];
        for lane in 0..WARP {
            let t = first + lane;
            let (g, q) = (lane / 4, lane % 4);
            for (i, reg) in a.iter().enumerate() {
                let bits = self.read(t, reg, Ty::B32)?;
                let (row, col) = (g + 8 * (i % 2), 2 * q + 8 * (i / 2));
                ma[row][col] = element(bits & 0xFFFF);
                ma[row][col + 1] = element(bits >> 16);
            }
            for (i, reg) in b.iter().enumerate() {
                let bits = self.read(t, reg, Ty::B32)?;
                let k = 2 * q + 8 * i;
                mb[k][g] = element(bits & 0xFFFF);
                mb[k + 1][g] = element(bits >> 16);
            }
            for (i, reg) in c.iter().enumerate() {
                mc[g + 8 * (i / 2)][2 * q + i % 2] = f32_of(self.read(t, reg, Ty::F32)?);
            }
        }
        for lane in 0..WARP {
            let (g, q) = (lane / 4, lane % 4);
            for (i, reg) in d.iter().enumerate() {
                let (row, col) = (g + 8 * (i / 2), 2 * q + i % 2);
                let mut sum = mc[row][col];
                for (k, b_row) in mb.iter().enumerate() {
                    sum += ma[row][k] * b_row[col];
                }
                self.write(first + lane, reg, Ty::F32, bits_f32(sum))?;
            }
        }
        Ok(())
    }

    /// Runs a thread until it blocks or exits.
    fn run_thread(&mut self, thread: usize) -> Result<(), String> {
        while self.threads[thread].state == State::Ready {
            let flow = self
                .step(thread)
                .map_err(|e| self.locate_error(thread, e))?;
            let t = &mut self.threads[thread];
            t.steps += 1;
            if t.steps > STEP_LIMIT {
                return Err(
                    self.locate_error(thread, "instruction limit reached (endless loop?)".into())
                );
            }
            let t = &mut self.threads[thread];
            match flow {
                Flow::Next => t.pc += 1,
                Flow::Jump(target) => t.pc = target,
                Flow::Barrier => t.state = State::AtBarrier,
                Flow::WarpCollective => t.state = State::AtWarpCollective,
                Flow::Exit => t.state = State::Exited,
            }
        }
        Ok(())
    }

    fn locate_error(&self, thread: usize, message: String) -> String {
        let t = &self.threads[thread];
        let text = self
            .kernel
            .body
            .get(t.pc)
            .map_or("<end>", |i| i.text.as_str());
        format!(
            "kernel {} block {:?} thread {:?}: {message} (at `{text}`)",
            self.kernel.name, self.ctaid, t.tid
        )
    }

    fn run(&mut self) -> Result<(), String> {
        let count = self.threads.len();
        loop {
            for thread in 0..count {
                self.run_thread(thread)?;
            }
            let mut progressed = false;
            for first in (0..count).step_by(WARP) {
                let lanes = first..(first + WARP).min(count);
                let waiting = lanes
                    .clone()
                    .filter(|&t| self.threads[t].state == State::AtWarpCollective)
                    .count();
                if waiting == 0 {
                    continue;
                }
                let pc = self.threads[first].pc;
                let aligned = lanes.len() == WARP
                    && lanes.clone().all(|t| {
                        self.threads[t].state == State::AtWarpCollective && self.threads[t].pc == pc
                    });
                if !aligned {
                    return Err(self.locate_error(
                        first + WARP.min(count - first) - 1,
                        "not every lane of the warp reached the same warp-wide instruction".into(),
                    ));
                }
                self.warp_collective(first)
                    .map_err(|e| self.locate_error(first, e))?;
                for t in lanes {
                    self.threads[t].pc += 1;
                    self.threads[t].state = State::Ready;
                }
                progressed = true;
            }
            if progressed {
                continue;
            }
            let at_barrier = self
                .threads
                .iter()
                .filter(|t| t.state == State::AtBarrier)
                .count();
            if at_barrier == 0 {
                return Ok(()); // every thread exited
            }
            if at_barrier != count {
                let exited = self
                    .threads
                    .iter()
                    .position(|t| t.state == State::Exited)
                    .unwrap_or(0);
                return Err(self.locate_error(
                    exited,
                    "bar.sync reached by some threads while others had exited".into(),
                ));
            }
            self.shared.barrier();
            for t in &mut self.threads {
                t.pc += 1;
                t.state = State::Ready;
            }
        }
    }
}

/// Runs `kernel` over the whole grid. `params` are the raw bits of each parameter, in order.
pub fn launch(
    kernel: &Kernel,
    dims: LaunchDims,
    params: &[u64],
    global: &mut GlobalMemory,
) -> Result<(), String> {
    if params.len() != kernel.params.len() {
        return Err(format!(
            "kernel {} takes {} parameters, {} given",
            kernel.name,
            kernel.params.len(),
            params.len()
        ));
    }
    let [bx, by, bz] = dims.block;
    let threads_per_block = (bx * by * bz) as usize;
    if threads_per_block == 0 || threads_per_block > 1024 {
        return Err(format!(
            "kernel {}: a block of {threads_per_block} threads (1..=1024 allowed)",
            kernel.name
        ));
    }
    let has_dynamic = kernel.shared.iter().any(|v| v.bytes.is_none());
    let shared_bytes = kernel.static_shared_bytes
        + if has_dynamic {
            dims.dynamic_shared_bytes as usize
        } else {
            0
        };
    let [gx, gy, gz] = dims.grid;
    for z in 0..gz {
        for y in 0..gy {
            for x in 0..gx {
                let threads = (0..threads_per_block as u32)
                    .map(|linear| Thread {
                        pc: 0,
                        regs: vec![0; kernel.register_count],
                        state: State::Ready,
                        tid: [linear % bx, (linear / bx) % by, linear / (bx * by)],
                        steps: 0,
                        uncommitted: Vec::new(),
                        in_flight: VecDeque::new(),
                    })
                    .collect();
                let mut cta = Cta {
                    kernel,
                    dims,
                    ctaid: [x, y, z],
                    params,
                    global,
                    shared: SharedMemory::new(shared_bytes),
                    threads,
                };
                cta.run()?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::parse_module;

    /// Thread t writes t to shared[t], then (after `BARRIER`) reads shared[t ^ 1] and stores it
    /// to out[t]; or with `GUARD` the odd threads exit first.
    const EXCHANGE: &str = r#"
            .reg .pred %p<2>;
            .reg .b32 %r<6>;
            .reg .b64 %rd<4>;
            .shared .align 4 .b8 slots[256];
            mov.u32 %r0, %tid.x;
            GUARD
            shl.b32 %r1, %r0, 2;
            st.shared.u32 [%r1], %r0;
            BARRIER
            xor.b32 %r2, %r0, 1;
            shl.b32 %r3, %r2, 2;
            ld.shared.u32 %r4, [%r3];
            ld.param.u64 %rd0, [out];
            mul.wide.u32 %rd1, %r0, 4;
            add.u64 %rd0, %rd0, %rd1;
            st.global.u32 [%rd0], %r4;
            ret;
    "#;

    /// A module of one kernel `exchange(out)` with this body.
    fn kernel(body: &str) -> String {
        format!(
            ".version 8.0\n.target sm_80\n.address_size 64\n\
             .visible .entry exchange(.param .u64 out)\n{{\n{body}\n}}\n"
        )
    }

    /// Runs `body` on one CTA of `threads` threads with an `out` of `out_len` u32s.
    fn run(body: &str, threads: u32, out_len: usize) -> Result<Vec<u32>, String> {
        let module = parse_module(&kernel(body))?;
        let mut global = GlobalMemory::default();
        let out = global.alloc(out_len * 4);
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [threads, 1, 1],
            dynamic_shared_bytes: 0,
        };
        launch(&module.kernels["exchange"], dims, &[out], &mut global)?;
        let bytes = global.read(out, out_len * 4)?;
        Ok(bytes
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }

    #[test]
    fn a_barrier_orders_shared_memory_between_threads() {
        let source = EXCHANGE
            .replace("GUARD", "")
            .replace("BARRIER", "bar.sync 0;");
        let out = run(&source, 64, 64).unwrap();
        assert_eq!(out, (0..64u32).map(|t| t ^ 1).collect::<Vec<_>>());
    }

    #[test]
    fn a_missing_barrier_is_reported_as_a_race() {
        let source = EXCHANGE.replace("GUARD", "").replace("BARRIER", "");
        let err = run(&source, 64, 64).unwrap_err();
        assert!(err.contains("shared-memory race"), "{err}");
    }

    #[test]
    fn threads_exiting_before_a_barrier_are_reported() {
        let source = EXCHANGE
            .replace(
                "GUARD",
                "and.b32 %r5, %r0, 1; setp.ne.u32 %p0, %r5, 0; @%p0 ret;",
            )
            .replace("BARRIER", "bar.sync 0;");
        let err = run(&source, 64, 64).unwrap_err();
        assert!(err.contains("others had exited"), "{err}");
    }

    #[test]
    fn out_of_bounds_stores_are_reported_with_the_thread() {
        let source = EXCHANGE
            .replace("GUARD", "")
            .replace("BARRIER", "bar.sync 0;");
        let err = run(&source, 64, 60).unwrap_err();
        assert!(
            err.contains("past the end") && err.contains("thread [60, 0, 0]"),
            "{err}"
        );
    }

    #[test]
    fn shuffles_need_every_lane_of_the_warp() {
        let source = r#"
                .reg .pred %p<1>;
                .reg .b32 %r<4>;
                .reg .b64 %rd<2>;
                mov.u32 %r0, %tid.x;
                setp.ge.u32 %p0, %r0, 16;
                @%p0 ret;
                shfl.sync.bfly.b32 %r1, %r0, 1, 31, -1;
                ret;
        "#;
        let err = run(source, 32, 1).unwrap_err();
        assert!(err.contains("not every lane"), "{err}");
    }

    /// Thread t copies out[t] into shared[t] with cp.async, then WAIT, then reads it back into
    /// out[t] (plus 1): what it reads depends on whether the copy has landed.
    const COPY_BACK: &str = r#"
            .reg .b32 %r<4>;
            .reg .b64 %rd<3>;
            .shared .align 4 .b8 slots[128];
            mov.u32 %r0, %tid.x;
            shl.b32 %r1, %r0, 2;
            st.shared.u32 [%r1], 7;
            ld.param.u64 %rd0, [out];
            mul.wide.u32 %rd1, %r0, 4;
            add.u64 %rd0, %rd0, %rd1;
            cp.async.ca.shared.global [%r1], [%rd0], 4;
            cp.async.commit_group;
            WAIT
            ld.shared.u32 %r2, [%r1];
            add.u32 %r2, %r2, 1;
            st.global.u32 [%rd0], %r2;
            ret;
    "#;

    #[test]
    fn cp_async_lands_only_when_its_group_is_waited_for() {
        // out starts at 0: a landed copy reads back 0 (+1), one still in flight the 7 before.
        let waited = run(&COPY_BACK.replace("WAIT", "cp.async.wait_group 0;"), 32, 32).unwrap();
        assert_eq!(waited, vec![1; 32]);
        let in_flight = run(&COPY_BACK.replace("WAIT", "cp.async.wait_group 1;"), 32, 32).unwrap();
        assert_eq!(in_flight, vec![8; 32]);
        let all = run(&COPY_BACK.replace("WAIT", "cp.async.wait_all;"), 32, 32).unwrap();
        assert_eq!(all, vec![1; 32]);
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3F80);
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one.
        assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(f32_to_bf16_bits(f32::NAN), 0x7FC0);
    }
}
