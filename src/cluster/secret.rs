//! The shared secret that authorizes role changes: read from a small file, compared in constant
//! time.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Longest secret file read (a line of random text is plenty).
const MAX_BYTES: u64 = 4096;
/// Shortest secret accepted: a guessable one would make the epoch fence worthless.
pub const MIN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret file {path}", path = .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret in {path} is {len} bytes; at least {MIN_LEN} are needed (e.g. `head -c 32 /dev/urandom | base64 > {path}`)", path = .path.display())]
    TooShort { path: PathBuf, len: usize },
    #[error("the secret in {path} holds a byte that is not printable ASCII (it travels in an HTTP header)", path = .path.display())]
    NotPrintable { path: PathBuf },
}

/// A secret, never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Reads `path` (bounded, non-blocking), without a trailing newline.
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let bytes = crate::sys::fsutil::read_capped(path, MAX_BYTES)
            .map_err(|source| SecretError::Read { path: path.to_owned(), source })?;
        let text = bytes.trim_ascii_end().to_vec();
        if text.len() < MIN_LEN {
            return Err(SecretError::TooShort { path: path.to_owned(), len: text.len() });
        }
        if !text.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(SecretError::NotPrintable { path: path.to_owned() });
        }
        Ok(Secret(text))
    }

    /// The header value to send.
    pub fn header(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Does `given` equal the secret? Constant time in the secret's content.
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.ct_eq(given).into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_and_the_newline_is_not_part_of_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, "short\n").unwrap();
        assert!(matches!(Secret::load(&p), Err(SecretError::TooShort { len: 5, .. })));
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        let s = Secret::load(&p).unwrap();
        assert!(s.matches(b"0123456789abcdef0123"));
        assert!(!s.matches(b"0123456789abcdef0123\n"));
        assert!(!s.matches(b"0123456789abcdef012"));
        assert!(!format!("{s:?}").contains("0123"));
    }
}
