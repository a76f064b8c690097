//! Bundles: a spec folder packed as a deterministic tar.gz (`tether deploy --server`), and on a
//! host the same folder unpacked once under `data_dir/bundles/<hex>/` for every task that runs
//! from it.
//!
//! The same folder always packs to the same bytes (entries sorted by name; times, owners and
//! modes normalised but for the executable bit), so redeploying an unchanged folder keeps the
//! digest, and with it the task fingerprint: nothing rolls. Only regular files and directories
//! are packed; a symbolic link is refused with its path, since what it points at may not exist
//! on other hosts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tether_model::bundle::{MAX_BUNDLE_BYTES, bundle_hex};

use crate::ControlClient;

/// Folders never packed: tether's own data, and version control.
const EXCLUDED: [&str; 2] = [".tether", ".git"];
/// At most this many bytes unpacked from one bundle.
const MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{} is a symbolic link; bundles hold regular files and directories only: replace it with what it points at, or set workingDirectory to an absolute path present on every host",
        .0.display()
    )]
    Symlink(PathBuf),
    #[error("{} is neither a regular file nor a directory; bundles hold only those", .0.display())]
    Special(PathBuf),
    #[error(
        "the folder packs to more than {limit} bytes ({size} so far); ship less, or set workingDirectory to an absolute path present on every host"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("`{0}` is not a bundle reference (sha256:<64 hex digits>)")]
    BadReference(String),
    #[error("the bundle fetched has digest {actual}, not {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("the bundle holds `{0}`, which is not a plain path inside it")]
    UnsafeEntry(String),
    #[error("the bundle unpacks to more than {0} bytes")]
    Unpacked(u64),
    #[error("cannot fetch bundle {reference}: {source}")]
    Fetch { reference: String, source: crate::ApiError },
}

/// A packed folder and its reference.
pub struct Packed {
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub reference: String,
}

/// `sha256:<hex>` of `bytes`.
pub fn reference(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Packs `folder` (without `.tether` and `.git`) as a deterministic tar.gz.
pub fn pack(folder: &Path) -> Result<Packed, BundleError> {
    let encoder = GzEncoder::new(Vec::new(), Compression::default());
    let mut builder = tar::Builder::new(encoder);
    add_dir(&mut builder, folder, Path::new(""))?;
    let io = |source| BundleError::Io { path: folder.to_path_buf(), source };
    let encoder = builder.into_inner().map_err(io)?;
    let bytes = encoder.finish().map_err(io)?;
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge { size: bytes.len() as u64, limit: MAX_BUNDLE_BYTES });
    }
    let reference = reference(&bytes);
    Ok(Packed { bytes, reference })
}

fn add_dir(
    builder: &mut tar::Builder<GzEncoder<Vec<u8>>>,
    root: &Path,
    relative: &Path,
) -> Result<(), BundleError> {
    let dir = root.join(relative);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, source }
    };
    let mut entries: Vec<std::fs::DirEntry> =
        std::fs::read_dir(&dir).map_err(io(&dir))?.collect::<Result<_, _>>().map_err(io(&dir))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        if EXCLUDED.iter().any(|x| name == *x) {
            continue;
        }
        let path = entry.path();
        let inner = relative.join(&name);
        let kind = entry.file_type().map_err(io(&path))?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if kind.is_symlink() {
            return Err(BundleError::Symlink(path));
        } else if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, &inner, std::io::empty()).map_err(io(&path))?;
            add_dir(builder, root, &inner)?;
        } else if kind.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            let metadata = file.metadata().map_err(io(&path))?;
            let executable = metadata.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(metadata.len());
            builder.append_data(&mut header, &inner, file).map_err(io(&path))?;
        } else {
            return Err(BundleError::Special(path));
        }
        let size = builder.get_ref().get_ref().len() as u64;
        if size > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { size, limit: MAX_BUNDLE_BYTES });
        }
    }
    Ok(())
}

/// Unpacks `bytes` into `into` (which must exist): regular files and directories only, every
/// path inside `into`.
pub fn unpack(bytes: &[u8], into: &Path) -> Result<(), BundleError> {
    let io = |source| BundleError::Io { path: into.to_path_buf(), source };
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    archive.set_preserve_mtime(false);
    let mut total = 0u64;
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let path = entry.path().map_err(io)?.into_owned();
        let shown = path.to_string_lossy().into_owned();
        let plain = path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(BundleError::UnsafeEntry(shown));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            _ => return Err(BundleError::UnsafeEntry(shown)),
        }
        total += entry.size();
        if total > MAX_UNPACKED_BYTES {
            return Err(BundleError::Unpacked(MAX_UNPACKED_BYTES));
        }
        if !entry.unpack_in(into).map_err(io)? {
            return Err(BundleError::UnsafeEntry(shown));
        }
    }
    Ok(())
}

/// The bundles unpacked on this host, fetched once each even when several tasks start at once.
#[derive(Default)]
pub(crate) struct BundleCache {
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BundleCache {
    /// `data_dir/bundles/<hex>/`, fetched from the control plane, checked and unpacked first
    /// when it is not there yet.
    pub(crate) async fn ensure(
        &self,
        client: &ControlClient,
        data_dir: &Path,
        reference: &str,
    ) -> Result<PathBuf, BundleError> {
        let hex = bundle_hex(reference).ok_or_else(|| BundleError::BadReference(reference.to_owned()))?;
        let parent = data_dir.join("bundles");
        let dir = parent.join(hex);
        if dir.is_dir() {
            return Ok(dir);
        }
        let lock = self.fetching.lock().expect("not poisoned").entry(hex.to_owned()).or_default().clone();
        let _fetching = lock.lock().await;
        if dir.is_dir() {
            return Ok(dir);
        }
        let bytes = client
            .bundle(reference)
            .await
            .map_err(|source| BundleError::Fetch { reference: reference.to_owned(), source })?;
        let actual = self::reference(&bytes);
        if actual != reference {
            return Err(BundleError::DigestMismatch { expected: reference.to_owned(), actual });
        }
        let target = dir.clone();
        tokio::task::spawn_blocking(move || place(&bytes, &parent, &target))
            .await
            .map_err(|e| BundleError::Io { path: dir.clone(), source: std::io::Error::other(e) })??;
        Ok(dir)
    }
}

/// Unpacks into a temporary directory beside `dir`, then renames it into place, so that a
/// task never sees half a bundle.
fn place(bytes: &[u8], parent: &Path, dir: &Path) -> Result<(), BundleError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, source }
    };
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let temporary = parent.join(format!(".unpacking-{:08x}", fastrand::u32(..)));
    std::fs::create_dir(&temporary).map_err(io(&temporary))?;
    let result = unpack(bytes, &temporary).and_then(|()| {
        std::fs::File::open(&temporary).and_then(|d| d.sync_all()).map_err(io(&temporary))?;
        match std::fs::rename(&temporary, dir) {
            Ok(()) => Ok(()),
            // Another agent process on the same data directory was first.
            Err(_) if dir.is_dir() => Ok(()),
            Err(e) => Err(io(dir)(e)),
        }
    });
    let _ = std::fs::remove_dir_all(&temporary);
    result
}

#[cfg(test)]
mod tests;
