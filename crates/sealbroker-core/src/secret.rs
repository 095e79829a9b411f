//! Secret byte strings: plaintexts and DEKs.

use zeroize::Zeroizing;

/// Bytes that must never be logged: a plaintext, a DEK, a PIN.
///
/// Deliberately not `Debug`, not `Display`, not `Clone`: a secret is moved,
/// not copied, and its memory is zeroed when it is dropped.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are zeroed on drop.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new secret. The caller remains responsible for
    /// zeroing the source.
    pub fn copy_from(bytes: &[u8]) -> Self {
        SecretBytes(Zeroizing::new(bytes.to_vec()))
    }

    /// The secret bytes. Keep the borrow short.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Mutable access, for filling a secret buffer in place.
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Gives the bytes up to a consumer that needs a plain `Vec` (e.g. a wire
    /// message). The returned vector is no longer zeroed on drop.
    pub fn into_unprotected_vec(self) -> Vec<u8> {
        let mut inner = self.0;
        std::mem::take(&mut *inner)
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        SecretBytes::new(bytes)
    }
}
