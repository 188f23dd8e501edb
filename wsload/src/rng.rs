//! A tiny non-cryptographic random number generator.
//!
//! RFC 6455 wants each client frame masked with a fresh, unpredictable key so
//! that intermediaries cannot be fooled by crafted payloads. For a loopback
//! benchmark a fast generator seeded from the kernel is plenty, and it costs a
//! few instructions per frame instead of a system call.

/// xorshift64* (Vigna), seeded from the operating system.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the kernel's random pool (`getrandom(2)` on
    /// Linux; elsewhere the OS-seeded keys of std's `RandomState`).
    pub fn from_entropy() -> Rng {
        Rng::with_seed(os_seed())
    }

    /// A generator with a fixed seed (zero is replaced, as xorshift would
    /// otherwise produce only zeros).
    pub fn with_seed(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Four random bytes, e.g. a frame's masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }

    /// Sixteen random bytes, e.g. the nonce behind `Sec-WebSocket-Key`.
    pub fn bytes16(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_u64().to_ne_bytes());
        out[8..].copy_from_slice(&self.next_u64().to_ne_bytes());
        out
    }
}

/// 64 random bits from `getrandom(2)`, falling back to the clock and an
/// address if that fails, which only weakens the masking.
#[cfg(target_os = "linux")]
fn os_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: the buffer is valid for writes of `seed.len()` bytes.
    let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    let mut value = u64::from_ne_bytes(seed);
    if got != seed.len() as isize {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        value ^= now ^ (&seed as *const _ as u64);
    }
    value
}

/// 64 random bits where `getrandom(2)` may not exist: std seeds each
/// `RandomState` from the operating system's random source, so the hash of
/// nothing under fresh keys is as good a seed.
#[cfg(not(target_os = "linux"))]
fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::hash::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_seed_does_not_get_stuck() {
        let mut rng = Rng::with_seed(0);
        assert_ne!(rng.next_u64(), 0);
        assert_ne!(rng.next_u64(), rng.next_u64());
    }

    #[test]
    fn masks_vary() {
        let mut rng = Rng::from_entropy();
        let masks: std::collections::HashSet<[u8; 4]> = (0..100).map(|_| rng.mask()).collect();
        assert!(masks.len() > 90);
    }
}
