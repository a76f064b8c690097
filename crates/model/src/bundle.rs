//! A bundle: the files of a spec's folder, packed by `tether deploy --server` and shipped to
//! agents through the control plane, named by the sha256 of its bytes (`sha256:<64 hex>`).

/// The largest bundle (packed) the CLI sends and the control plane stores.
pub const MAX_BUNDLE_BYTES: u64 = 32 * 1024 * 1024;

/// The hex digits of a bundle reference, `sha256:` then 64 lowercase hex digits.
pub fn bundle_hex(reference: &str) -> Option<&str> {
    let hex = reference.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_sha256_and_64_lowercase_hex_digits() {
        let hex = "ab".repeat(32);
        assert_eq!(bundle_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        for bad in [
            hex.clone(),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{hex}0"),
            format!("md5:{hex}"),
            "sha256:".to_owned(),
        ] {
            assert_eq!(bundle_hex(&bad), None, "{bad}");
        }
    }
}
