//! Element types that can be copied between host and device buffers.

/// A plain value with a fixed little-endian byte representation, as a kernel reads it.
pub trait Element: Copy + Default + Send + Sync + 'static {
    const BYTES: usize;
    fn write_le(self, out: &mut [u8]);
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const BYTES: usize = std::mem::size_of::<$t>();
            fn write_le(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("element width"))
            }
        }
    )*};
}

element!(f32, f64, u16, u32, i32, u64, i64);

impl Element for half::bf16 {
    const BYTES: usize = 2;
    fn write_le(self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_bits().to_le_bytes());
    }
    fn read_le(bytes: &[u8]) -> Self {
        half::bf16::from_bits(u16::read_le(bytes))
    }
}

/// The bytes of a slice of elements.
pub fn to_bytes<T: Element>(values: &[T]) -> Vec<u8> {
    let mut bytes = vec![0u8; values.len() * T::BYTES];
    for (value, out) in values.iter().zip(bytes.chunks_exact_mut(T::BYTES)) {
        value.write_le(out);
    }
    bytes
}

/// Elements read back from bytes.
pub fn from_bytes<T: Element>(bytes: &[u8]) -> Vec<T> {
    bytes.chunks_exact(T::BYTES).map(T::read_le).collect()
}
