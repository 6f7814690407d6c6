//! The emulator's memories: global memory as a set of bounds-checked allocations, and one CTA's
//! shared memory with a data-race detector.

use std::collections::BTreeMap;

/// Device global memory: every allocation is its own byte vector at a fake device address, so
/// an access that leaves its allocation is reported instead of silently reading a neighbour
/// (what `compute-sanitizer --tool memcheck` reports on a real GPU).
pub struct GlobalMemory {
    allocations: BTreeMap<u64, Vec<u8>>,
    next_address: u64,
}

/// Device addresses start high so that a null or small integer used as a pointer never resolves.
const FIRST_ADDRESS: u64 = 0x7f00_0000_0000;
/// Allocations are 256-byte aligned, like `cuMemAlloc`.
const ALIGNMENT: u64 = 256;

impl std::fmt::Debug for GlobalMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes: usize = self.allocations.values().map(Vec::len).sum();
        write!(
            f,
            "GlobalMemory {{ {} allocations, {bytes} bytes }}",
            self.allocations.len()
        )
    }
}

impl Default for GlobalMemory {
    fn default() -> Self {
        Self {
            allocations: BTreeMap::new(),
            next_address: FIRST_ADDRESS,
        }
    }
}

impl GlobalMemory {
    /// Allocates `bytes` (zeroed) and returns the device address.
    pub fn alloc(&mut self, bytes: usize) -> u64 {
        let address = self.next_address;
        self.allocations.insert(address, vec![0; bytes]);
        // A gap of one alignment unit after each allocation keeps neighbours apart.
        self.next_address += (bytes as u64).div_ceil(ALIGNMENT) * ALIGNMENT + ALIGNMENT;
        address
    }

    pub fn free(&mut self, address: u64) {
        self.allocations.remove(&address);
    }

    fn locate(&self, address: u64, len: usize) -> Result<(u64, usize), String> {
        if let Some((&base, data)) = self.allocations.range(..=address).next_back() {
            let start = (address - base) as usize;
            if start + len <= data.len() {
                return Ok((base, start));
            }
            return Err(format!(
                "{len}-byte access at 0x{address:x} runs past the end of a {}-byte allocation \
                 at 0x{base:x} (offset {start})",
                data.len()
            ));
        }
        Err(format!(
            "{len}-byte access at 0x{address:x} is outside every allocation"
        ))
    }

    pub fn read(&self, address: u64, len: usize) -> Result<&[u8], String> {
        let (base, start) = self.locate(address, len)?;
        Ok(&self.allocations[&base][start..start + len])
    }

    pub fn write(&mut self, address: u64, bytes: &[u8]) -> Result<(), String> {
        let (base, start) = self.locate(address, bytes.len())?;
        let data = self.allocations.get_mut(&base).expect("located allocation");
        data[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

/// Marks a shared-memory byte read by more than one thread in the current barrier interval.
const MANY_READERS: u32 = u32::MAX;
/// Marks a shared-memory byte updated by atomics (`atom.shared`, `red.shared`) in the current
/// interval: atomics of many threads on one byte do not race with each other, but a plain
/// access by another thread in the same interval does.
const ATOMICS: u32 = u32::MAX - 1;

/// Who touched a byte, for race reports.
fn who(thread: u32) -> String {
    match thread {
        MANY_READERS => "other threads".to_string(),
        ATOMICS => "atomics".to_string(),
        t => format!("thread {t}"),
    }
}

/// One CTA's shared memory. Besides the bytes it remembers, per byte, which thread last wrote
/// and read it in the current *barrier interval* (the instructions between two `bar.sync`).
/// Two different threads touching the same byte in one interval, at least one of them writing,
/// is a data race on a GPU — whatever order the emulator happened to run them in — and is
/// reported (the check `compute-sanitizer --tool racecheck` makes).
#[derive(Debug)]
pub struct SharedMemory {
    bytes: Vec<u8>,
    /// `(interval, thread)` of the last write of each byte.
    writer: Vec<(u32, u32)>,
    /// `(interval, thread or MANY_READERS)` of the reads of each byte.
    reader: Vec<(u32, u32)>,
    interval: u32,
}

impl SharedMemory {
    /// Fresh shared memory is filled with 0xFF bytes (a NaN pattern for floats) so that reading
    /// a value nobody wrote shows up in results instead of passing as zero.
    pub fn new(bytes: usize) -> Self {
        Self {
            bytes: vec![0xFF; bytes],
            writer: vec![(u32::MAX, 0); bytes],
            reader: vec![(u32::MAX, 0); bytes],
            interval: 0,
        }
    }

    /// A barrier ends the interval: accesses before it are ordered with accesses after it.
    pub fn barrier(&mut self) {
        self.interval += 1;
    }

    fn check_range(&self, address: u64, len: usize) -> Result<usize, String> {
        let start = address as usize;
        if address > usize::MAX as u64 || start + len > self.bytes.len() {
            return Err(format!(
                "{len}-byte shared-memory access at offset {address} runs past the {} bytes \
                 of shared memory",
                self.bytes.len()
            ));
        }
        Ok(start)
    }

    pub fn read(&mut self, address: u64, len: usize, thread: u32) -> Result<&[u8], String> {
        let start = self.check_range(address, len)?;
        for byte in start..start + len {
            let (interval, writer) = self.writer[byte];
            if interval == self.interval && writer != thread {
                return Err(format!(
                    "shared-memory race: thread {thread} reads offset {byte} written by {} with \
                     no bar.sync in between",
                    who(writer)
                ));
            }
            let (interval, reader) = self.reader[byte];
            self.reader[byte] = if interval == self.interval && reader != thread {
                (self.interval, MANY_READERS)
            } else {
                (self.interval, thread)
            };
        }
        Ok(&self.bytes[start..start + len])
    }

    pub fn write(&mut self, address: u64, data: &[u8], thread: u32) -> Result<(), String> {
        let start = self.claim_write(address, data.len(), thread)?;
        self.bytes[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Records that `thread` writes `len` bytes at `address` in this interval, without changing
    /// them (yet): an asynchronous copy may land any time between its issue and its wait, so
    /// it claims its bytes at issue too. Returns the start offset.
    pub fn claim_write(&mut self, address: u64, len: usize, thread: u32) -> Result<usize, String> {
        let start = self.check_range(address, len)?;
        for byte in start..start + len {
            let (interval, writer) = self.writer[byte];
            if interval == self.interval && writer != thread {
                return Err(format!(
                    "shared-memory race: {} and thread {thread} both write offset {byte} with no \
                     bar.sync in between",
                    who(writer)
                ));
            }
            let (interval, reader) = self.reader[byte];
            if interval == self.interval && reader != thread {
                return Err(format!(
                    "shared-memory race: thread {thread} writes offset {byte} read by {} with no \
                     bar.sync in between",
                    who(reader)
                ));
            }
            self.writer[byte] = (self.interval, thread);
        }
        Ok(start)
    }

    /// An atomic read-modify-write of the `len`-byte value at `address` by `thread`: returns
    /// the old value and stores `update(old)`.
    pub fn atomic(
        &mut self,
        address: u64,
        len: usize,
        thread: u32,
        update: impl FnOnce(u64) -> u64,
    ) -> Result<u64, String> {
        let start = self.check_range(address, len)?;
        for byte in start..start + len {
            let (interval, writer) = self.writer[byte];
            if interval == self.interval && writer != thread && writer != ATOMICS {
                return Err(format!(
                    "shared-memory race: an atomic of thread {thread} meets the write of {} to \
                     offset {byte} with no bar.sync in between",
                    who(writer)
                ));
            }
            let (interval, reader) = self.reader[byte];
            if interval == self.interval && reader != thread {
                return Err(format!(
                    "shared-memory race: an atomic of thread {thread} meets the read of {} of \
                     offset {byte} with no bar.sync in between",
                    who(reader)
                ));
            }
            self.writer[byte] = (self.interval, ATOMICS);
        }
        let mut value = [0u8; 8];
        value[..len].copy_from_slice(&self.bytes[start..start + len]);
        let old = u64::from_le_bytes(value);
        self.bytes[start..start + len].copy_from_slice(&update(old).to_le_bytes()[..len]);
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_accesses_outside_an_allocation_are_errors() {
        let mut memory = GlobalMemory::default();
        let a = memory.alloc(16);
        let b = memory.alloc(16);
        memory.write(a + 12, &[1, 2, 3, 4]).unwrap();
        assert_eq!(memory.read(a + 12, 4).unwrap(), &[1, 2, 3, 4]);
        assert!(memory.read(a + 13, 4).unwrap_err().contains("past the end"));
        assert!(
            memory.read(b - 8, 4).is_err(),
            "the gap between allocations"
        );
        assert!(memory.read(0, 4).unwrap_err().contains("outside"));
        memory.free(a);
        assert!(memory.read(a, 4).is_err(), "use after free");
    }

    #[test]
    fn shared_memory_races_need_a_barrier_between_threads() {
        let mut shared = SharedMemory::new(64);
        shared.write(0, &[7; 4], 0).unwrap();
        shared.read(0, 4, 0).unwrap();
        assert!(shared.read(0, 4, 1).unwrap_err().contains("race"));
        shared.barrier();
        shared.read(0, 4, 1).unwrap();
        shared.read(0, 4, 2).unwrap();
        assert!(shared
            .write(2, &[0], 3)
            .unwrap_err()
            .contains("other threads"));
        shared.barrier();
        shared.write(2, &[0], 3).unwrap();
        assert!(shared.write(2, &[0], 4).unwrap_err().contains("both write"));
        assert!(shared.read(62, 4, 0).unwrap_err().contains("64 bytes"));
    }

    #[test]
    fn shared_atomics_race_only_with_plain_accesses() {
        let mut shared = SharedMemory::new(16);
        shared.write(0, &[0; 4], 0).unwrap();
        shared.barrier();
        for thread in 1..4 {
            shared.atomic(0, 4, thread, |old| old + 1).unwrap();
        }
        assert!(shared.read(0, 4, 1).unwrap_err().contains("atomics"));
        assert!(shared.write(0, &[0], 2).unwrap_err().contains("atomics"));
        shared.barrier();
        assert_eq!(shared.read(0, 4, 5).unwrap(), &[3, 0, 0, 0]);
        assert!(shared
            .atomic(0, 4, 6, |old| old)
            .unwrap_err()
            .contains("thread 5"));
        shared.write(8, &[1], 7).unwrap();
        assert!(shared
            .atomic(8, 4, 6, |old| old)
            .unwrap_err()
            .contains("thread 7"));
    }
}
