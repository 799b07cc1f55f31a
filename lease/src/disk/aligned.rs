//! Page-aligned buffers for O_DIRECT I/O.

use memmap2::MmapMut;

/// An anonymous mapping: page-aligned, so it satisfies O_DIRECT alignment for
/// both 512- and 4096-byte sectors.
pub struct AlignedBuffer {
    map: MmapMut,
    length_bytes: usize,
}

impl AlignedBuffer {
    pub fn new(length_bytes: usize) -> std::io::Result<AlignedBuffer> {
        let map = MmapMut::map_anon(length_bytes.max(1))?;
        Ok(AlignedBuffer { map, length_bytes })
    }

    /// Grow (never shrink) the capacity, then set the length in use.
    pub fn resize(&mut self, length_bytes: usize) -> std::io::Result<()> {
        if length_bytes > self.map.len() {
            self.map = MmapMut::map_anon(length_bytes)?;
        }
        self.length_bytes = length_bytes;
        Ok(())
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map[..self.length_bytes]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[..self.length_bytes]
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        self.length_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.length_bytes == 0
    }
}
