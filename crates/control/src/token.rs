//! The admin token: made at random on first start and kept in two places, the store (so every
//! server replica on a shared etcd accepts the same token, and proxies and runners can move
//! between replicas) and `DIR/admin.token`, mode 0600 (so the CLI on the server's machine can
//! read it).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tether_store::{Compare, Op, Store, Txn};

use crate::registry::keys;
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

    /// The token every server on `store` accepts: the one in the store if there is one;
    /// otherwise the one in `dir/admin.token` (a store started before tokens were shared), or a
    /// new random one, which is then put in the store. `dir/admin.token` is (re)written when it
    /// does not hold that token. Returns the token and the file's path.
    pub async fn load_or_create<S: Store>(dir: &Path, store: &S) -> Result<(Self, PathBuf)> {
        let path = dir.join(TOKEN_FILE);
        let local = read(&path)?;
        let candidate = match &local {
            Some(token) => token.clone(),
            None => Self::random().map_err(|source| Error::DataDir { path: path.clone(), source })?,
        };
        // Absent: of several replicas starting at once, exactly one token wins.
        let txn = Txn {
            when: vec![Compare::Absent(keys::ADMIN_TOKEN.to_owned())],
            ops: vec![Op::Put {
                key: keys::ADMIN_TOKEN.to_owned(),
                value: candidate.0.as_bytes().to_vec(),
                lease: None,
            }],
        };
        let shared = match store.commit(txn).await {
            Ok(_) => candidate,
            Err(tether_store::Error::Conflict(_)) => {
                let kv = store.get(keys::ADMIN_TOKEN).await?.ok_or_else(|| {
                    Error::Store(format!("`{}` vanished while it was being read", keys::ADMIN_TOKEN))
                })?;
                let text = String::from_utf8(kv.value)
                    .map_err(|e| Error::Corrupt { key: kv.key.clone(), reason: e.to_string() })?;
                Self::new(text.trim())
            }
            Err(e) => return Err(e.into()),
        };
        if local.as_ref().is_none_or(|l| l.0 != shared.0) {
            if local.is_some() {
                tracing::warn!(path = %path.display(), "the admin token file differs from the token the store holds; replacing the file");
            }
            write(&path, &shared).map_err(|source| Error::DataDir { path: path.clone(), source })?;
        }
        Ok((shared, path))
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

/// The token in `path`, if the file exists.
fn read(path: &Path) -> Result<Option<AdminToken>> {
    let io = |source| Error::DataDir { path: path.to_owned(), source };
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the admin token file is readable by others; chmod 600 it");
            }
            Ok(Some(AdminToken::new(text.trim())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// Writes the token beside `path` with mode 0600 and renames it into place, so a reader never
/// sees half a token and the file is never readable by others, even for a moment.
fn write(path: &Path, token: &AdminToken) -> std::io::Result<()> {
    let temporary = path.with_extension("token.new");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(format!("{}\n", token.0).as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Tokens derived from the admin token: `TEXT:TAG`, the tag an HMAC-SHA256 of `TEXT` keyed by
/// the admin token and a context, so that every replica (they share the admin token) verifies
/// them without storing anything, and a tag made for one kind of token means nothing to another.
#[derive(Clone)]
pub struct Signer {
    key: ring::hmac::Key,
}

impl Signer {
    pub fn new(admin: &AdminToken, context: &[u8]) -> Self {
        let mut secret = context.to_vec();
        secret.extend_from_slice(admin.as_str().as_bytes());
        Self { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret) }
    }

    /// `text` with its tag.
    pub fn sign(&self, text: &str) -> String {
        let tag = ring::hmac::sign(&self.key, text.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{text}:{hex}")
    }

    /// The signed text of `token`, if its tag is right (checked in constant time).
    pub fn verify<'a>(&self, token: &'a str) -> Option<&'a str> {
        let (text, hex) = token.rsplit_once(':')?;
        if hex.len() != 64 {
            return None;
        }
        let tag = decode_hex(hex)?;
        ring::hmac::verify(&self.key, text.as_bytes(), &tag).ok()?;
        Some(text)
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// Never prints the token itself.
impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

#[cfg(test)]
mod tests {
    use tether_store::Embedded;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn a_token_is_created_once_with_mode_0600_and_reused() {
        let (dir, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Embedded::open(db.path()).unwrap();
        let (first, path) = AdminToken::load_or_create(dir.path(), &store).await.unwrap();
        assert_eq!(first.as_str().len(), 64);
        assert_eq!(mode(&path), 0o600);
        let (again, _) = AdminToken::load_or_create(dir.path(), &store).await.unwrap();
        assert_eq!(first.as_str(), again.as_str());
        assert!(first.matches(again.as_str()));
        assert!(!first.matches(&again.as_str()[1..]));
        assert!(!first.matches(""));
    }

    #[tokio::test]
    async fn replicas_on_one_store_agree_on_one_token() {
        let db = tempfile::tempdir().unwrap();
        let store = Embedded::open(db.path()).unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, _) = AdminToken::load_or_create(a.path(), &store).await.unwrap();
        // b has a token of its own from before: the store's wins, and b's file is replaced.
        std::fs::write(b.path().join(TOKEN_FILE), "old\n").unwrap();
        let (second, path) = AdminToken::load_or_create(b.path(), &store).await.unwrap();
        assert_eq!(first.as_str(), second.as_str());
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), first.as_str());
        assert_eq!(mode(&path), 0o600);
    }

    #[tokio::test]
    async fn an_existing_token_file_seeds_an_empty_store() {
        let (dir, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(dir.path().join(TOKEN_FILE), "kept-from-before\n").unwrap();
        let store = Embedded::open(db.path()).unwrap();
        let (token, _) = AdminToken::load_or_create(dir.path(), &store).await.unwrap();
        assert_eq!(token.as_str(), "kept-from-before");
    }
}
