//! A stable 64-bit digest (FNV-1a) for determinism checks.
//!
//! `std`'s hashers are not guaranteed to be stable across Rust releases, and a
//! trace digest must be comparable byte for byte between runs and builds, so
//! the simulator hashes with this small, fully specified function instead.
//! It is not cryptographic: it detects divergence, not tampering.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// An incremental FNV-1a 64-bit digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    state: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Self::new()
    }
}

impl Digest {
    /// An empty digest.
    pub fn new() -> Self {
        Self {
            state: FNV_OFFSET_BASIS,
        }
    }

    /// Feeds raw bytes.
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        for byte in data {
            self.state ^= u64::from(*byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// Feeds a length-prefixed byte string, so that `("ab", "c")` and
    /// `("a", "bc")` differ.
    pub fn field(&mut self, data: &[u8]) -> &mut Self {
        self.u64(data.len() as u64);
        self.bytes(data)
    }

    /// Feeds an unsigned integer (little-endian bytes).
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// Feeds a signed integer (little-endian bytes).
    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// The digest so far.
    pub fn finish(&self) -> u64 {
        self.state
    }
}

/// Derives an independent seed for the random stream named `label` from a
/// scenario seed, so that each fault source has its own ChaCha8 stream and
/// adding one source does not shift the others.
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    Digest::new().u64(seed).field(label.as_bytes()).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_fnv1a_reference_vectors() {
        assert_eq!(Digest::new().finish(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Digest::new().bytes(b"a").finish(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Digest::new().bytes(b"foobar").finish(), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn derived_seeds_differ_by_label_and_seed() {
        assert_ne!(derive_seed(1, "disk"), derive_seed(1, "broker"));
        assert_ne!(derive_seed(1, "disk"), derive_seed(2, "disk"));
        assert_eq!(derive_seed(1, "disk"), derive_seed(1, "disk"));
    }

    #[test]
    fn fields_are_length_prefixed() {
        let ab_c = Digest::new().field(b"ab").field(b"c").finish();
        let a_bc = Digest::new().field(b"a").field(b"bc").finish();
        assert_ne!(ab_c, a_bc);
    }
}
