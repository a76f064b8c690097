//! The admin token: created at random on first start, kept in `DIR/admin.token` (mode 0600) and
//! reused on later starts, so the CLI on the same machine can read it.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::{Error, Result};

/// The token file's name inside the data directory.
pub const TOKEN_FILE: &str = "admin.token";
/// 32 random bytes, written as 64 hex digits.
const TOKEN_BYTES: usize = 32;

#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(token.into())
    }

    /// Reads `dir/admin.token`, or creates it with a new random token (mode 0600) when there is
    /// none. Returns the token and the file's path.
    pub fn load_or_create(dir: &Path) -> Result<(Self, PathBuf)> {
        let path = dir.join(TOKEN_FILE);
        let io = |source| Error::DataDir { path: path.clone(), source };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim();
                if token.is_empty() {
                    let source =
                        std::io::Error::other("the token file is empty; delete it to have a new token made");
                    return Err(io(source));
                }
                let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the admin token file is readable by others; chmod 600 it");
                }
                Ok((Self::new(token), path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = Self::random().map_err(io)?;
                // create_new: if another process made the file meanwhile, fail rather than
                // overwrite a token someone may already hold.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                file.write_all(format!("{}\n", token.0).as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok((token, path))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn random() -> std::io::Result<Self> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|e| std::io::Error::other(format!("no randomness for the token: {e}")))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self::new(hex))
    }

    /// Compares in constant time, so the time a wrong guess takes says nothing about the token.
    pub fn matches(&self, given: &str) -> bool {
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Never prints the token itself.
impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, path) = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(first.as_str().len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, _) = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(first.as_str(), again.as_str());
        assert!(first.matches(again.as_str()));
        assert!(!first.matches(&again.as_str()[1..]));
        assert!(!first.matches(""));
    }
}
