use std::os::unix::fs::PermissionsExt;

use super::*;

fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tether.yaml"), "namespace: a\n").unwrap();
    std::fs::create_dir_all(dir.path().join("app/static")).unwrap();
    std::fs::write(dir.path().join("app/main.py"), "print('hi')\n").unwrap();
    std::fs::write(dir.path().join("app/static/b.css"), "b {}\n").unwrap();
    std::fs::write(dir.path().join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.path().join("run.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir_all(dir.path().join(".tether/logs")).unwrap();
    std::fs::write(dir.path().join(".tether/logs/x.log"), "noise").unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/HEAD"), "ref").unwrap();
    dir
}

#[test]
fn the_same_folder_packs_to_the_same_digest_and_a_change_to_another() {
    let one = folder();
    let first = pack(one.path()).unwrap();
    assert_eq!(first.reference, reference(&first.bytes));
    assert!(bundle_hex(&first.reference).is_some(), "{}", first.reference);

    // Another copy, written at another time, in another order, with other permissions but
    // the same executable bits, and other noise in the excluded folders.
    let two = tempfile::tempdir().unwrap();
    std::fs::write(two.path().join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(two.path().join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(two.path().join("app/static")).unwrap();
    std::fs::write(two.path().join("app/static/b.css"), "b {}\n").unwrap();
    std::fs::write(two.path().join("app/main.py"), "print('hi')\n").unwrap();
    std::fs::set_permissions(two.path().join("app/main.py"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(two.path().join("tether.yaml"), "namespace: a\n").unwrap();
    std::fs::create_dir_all(two.path().join(".git")).unwrap();
    std::fs::write(two.path().join(".git/HEAD"), "other").unwrap();
    assert_eq!(pack(two.path()).unwrap().reference, first.reference);
    assert_eq!(pack(one.path()).unwrap().bytes, first.bytes);

    std::fs::write(one.path().join("app/main.py"), "print('changed')\n").unwrap();
    assert_ne!(pack(one.path()).unwrap().reference, first.reference);
}

#[test]
fn unpacking_gives_back_the_files_without_the_excluded_folders() {
    let source = folder();
    let packed = pack(source.path()).unwrap();
    let into = tempfile::tempdir().unwrap();
    unpack(&packed.bytes, into.path()).unwrap();
    assert_eq!(std::fs::read_to_string(into.path().join("app/main.py")).unwrap(), "print('hi')\n");
    assert_eq!(std::fs::read_to_string(into.path().join("app/static/b.css")).unwrap(), "b {}\n");
    let mode = std::fs::metadata(into.path().join("run.sh")).unwrap().permissions().mode();
    assert!(mode & 0o100 != 0, "the executable bit is kept: {mode:o}");
    assert!(!into.path().join(".tether").exists() && !into.path().join(".git").exists());
}

#[test]
fn symbolic_links_are_refused_with_their_path() {
    let dir = folder();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("app/passwd")).unwrap();
    let error = pack(dir.path()).err().expect("refused").to_string();
    assert!(error.contains("app/passwd") && error.contains("symbolic link"), "{error}");
}

/// A tar.gz with one entry at `path`, written without the tar crate's checks.
fn archive_with(path: &str, kind: tar::EntryType) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(if kind == tar::EntryType::Regular { 2 } else { 0 });
    header.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Regular { b"hi" } else { b"" };
    builder.append(&header, data).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn entries_outside_the_folder_or_of_other_kinds_are_refused() {
    let into = tempfile::tempdir().unwrap();
    let inside = into.path().join("inside");
    std::fs::create_dir(&inside).unwrap();
    for (path, kind) in [
        ("../escaped", tar::EntryType::Regular),
        ("/tmp/absolute-escape", tar::EntryType::Regular),
        ("link", tar::EntryType::Symlink),
    ] {
        let error = unpack(&archive_with(path, kind), &inside).expect_err(path);
        assert!(matches!(error, BundleError::UnsafeEntry(_)), "{path}: {error}");
    }
    assert!(!into.path().join("escaped").exists());
    unpack(&archive_with("fine.txt", tar::EntryType::Regular), &inside).unwrap();
    assert_eq!(std::fs::read(inside.join("fine.txt")).unwrap(), b"hi");
}
