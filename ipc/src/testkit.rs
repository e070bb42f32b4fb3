//! Deterministic test objects shared by the test helper binary, the tests and the benchmark.
//! Not part of the supported API.

/// splitmix64: a fast, well-mixed function of one word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn word(seed: u64, index: u64) -> [u8; 8] {
    mix(seed.rotate_left(32) ^ index).to_le_bytes()
}

/// Fills `buf` with the bytes at `offset..offset + buf.len()` of the object named by `seed`.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut at = offset;
    let mut rest = buf;
    // Unaligned head.
    while at % 8 != 0 && !rest.is_empty() {
        let (first, tail) = rest.split_at_mut(1);
        first[0] = word(seed, at / 8)[(at % 8) as usize];
        rest = tail;
        at += 1;
    }
    let mut words = rest.chunks_exact_mut(8);
    for chunk in &mut words {
        chunk.copy_from_slice(&word(seed, at / 8));
        at += 8;
    }
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte = word(seed, at / 8)[i];
    }
}

/// The whole object of `len` bytes named by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    fill_pattern(seed, 0, &mut buf);
    buf
}

/// Checks that `data` equals the object named by `seed` at `offset`; returns the first
/// differing absolute offset.
pub fn check_pattern(
    seed: u64,
    offset: u64,
    data: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), u64> {
    scratch.resize(data.len(), 0);
    fill_pattern(seed, offset, scratch);
    if scratch.as_slice() == data {
        return Ok(());
    }
    let first = data
        .iter()
        .zip(scratch.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    Err(offset + first as u64)
}

/// A running checksum over bytes (order sensitive, independent of how the bytes are split).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    state: u64,
    len: u64,
}

impl Checksum {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        for &byte in data {
            self.state = (self.state ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.len += data.len() as u64;
    }
    /// The value (FNV-1a 64 mixed with the length).
    pub fn value(&self) -> u64 {
        mix(self.state ^ self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_split_independent() {
        let whole = pattern(7, 1000);
        let mut part = vec![0; 333];
        fill_pattern(7, 13, &mut part);
        assert_eq!(&whole[13..346], &part[..]);
        let mut scratch = Vec::new();
        assert_eq!(check_pattern(7, 13, &part, &mut scratch), Ok(()));
        part[5] ^= 1;
        assert_eq!(check_pattern(7, 13, &part, &mut scratch), Err(18));
        assert_ne!(pattern(8, 16), pattern(7, 16));
    }

    #[test]
    fn checksum_ignores_splits() {
        let data = pattern(1, 100);
        let mut a = Checksum::default();
        a.update(&data);
        let mut b = Checksum::default();
        b.update(&data[..40]);
        b.update(&data[40..]);
        assert_eq!(a.value(), b.value());
    }
}
