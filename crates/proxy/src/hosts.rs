//! The task's hosts file (design §7): the host's own entries, then one line per client alias,
//! so that the app finds `payment-service` at its outbound listener.
//!
//! The runner bind-mounts the file over the app's `/etc/hosts`, and a bind mount holds on to
//! an inode: the file is rewritten in place, never replaced.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tether_model::Outbound;

/// The line above the proxy's part of the file. Everything from it on is the proxy's: what
/// an earlier run of the sidecar wrote there is not part of the header.
pub const ALIASES_COMMENT: &str = "# tether: client aliases";

/// Client aliases by name, as the hosts file lists them (sorted by name).
pub type Aliases = BTreeMap<String, Ipv4Addr>;

/// A hosts file the proxy keeps up to date.
pub struct HostsFile {
    path: PathBuf,
    file: File,
    /// The file as it was when the proxy started, up to the proxy's part.
    header: String,
    /// What was last written; nothing before the first write.
    written: Option<Aliases>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot use the hosts file {}: {source}", path.display())]
pub struct HostsError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The aliases of outbound listeners on loopback addresses: those the app can reach by name.
pub fn aliases(outbound: &[Outbound]) -> Aliases {
    outbound
        .iter()
        .filter_map(|o| match o.listen.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => Some((o.dns_name.clone(), ip)),
            _ => None,
        })
        .collect()
}

impl HostsFile {
    /// Opens the file at `path` for reading and writing, and keeps what it holds now as the
    /// header of everything written later.
    pub fn open(path: &Path) -> Result<Self, HostsError> {
        let failed = |source| HostsError { path: path.to_owned(), source };
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(failed)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(failed)?;
        Ok(Self { path: path.to_owned(), file, header: header_of(&text), written: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the file in place to list `aliases`, unless it already does. Says whether it
    /// wrote.
    pub fn update(&mut self, aliases: Aliases) -> io::Result<bool> {
        if self.written.as_ref() == Some(&aliases) {
            return Ok(false);
        }
        let content = self.render(&aliases);
        // One write of the whole content, then the length: a reader sees the old lines or the
        // new ones, and at worst a moment of stale tail, never an empty file.
        self.file.write_all_at(content.as_bytes(), 0)?;
        self.file.set_len(content.len() as u64)?;
        self.written = Some(aliases);
        Ok(true)
    }

    fn render(&self, aliases: &Aliases) -> String {
        let mut content = self.header.clone();
        content.push_str(ALIASES_COMMENT);
        content.push('\n');
        for (name, ip) in aliases {
            content.push_str(&format!("{ip}\t{name}\n"));
        }
        content
    }
}

/// `text` up to the proxy's part, ending with a line break unless empty.
fn header_of(text: &str) -> String {
    let mut header = String::with_capacity(text.len() + 1);
    for line in text.split_inclusive('\n') {
        if line.trim_end() == ALIASES_COMMENT {
            break;
        }
        header.push_str(line);
    }
    if !header.is_empty() && !header.ends_with('\n') {
        header.push('\n');
    }
    header
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const HOST: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";

    /// A file of its own for each test, removed when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file_with(text: &str) -> (Scratch, PathBuf) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tether-hosts-test-{}-{n}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        (Scratch(path.clone()), path)
    }

    fn aliases(list: &[(&str, [u8; 4])]) -> Aliases {
        list.iter().map(|(name, ip)| ((*name).to_owned(), Ipv4Addr::from(*ip))).collect()
    }

    #[test]
    fn lists_the_aliases_by_name_under_the_hosts_own_entries() {
        let (_dir, path) = file_with(HOST);
        let mut hosts = HostsFile::open(&path).unwrap();
        let written =
            hosts.update(aliases(&[("payment", [127, 255, 0, 2]), ("cart", [127, 255, 0, 1])])).unwrap();
        assert!(written);
        let expected = format!("{HOST}{ALIASES_COMMENT}\n127.255.0.1\tcart\n127.255.0.2\tpayment\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    }

    #[test]
    fn rewrites_in_place_and_shrinks() {
        let (_dir, path) = file_with(HOST);
        let inode = std::fs::metadata(&path).unwrap().ino();
        let mut hosts = HostsFile::open(&path).unwrap();
        hosts.update(aliases(&[("a-long-name", [127, 255, 0, 1]), ("b", [127, 255, 0, 2])])).unwrap();
        hosts.update(aliases(&[("b", [127, 255, 0, 2])])).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{HOST}{ALIASES_COMMENT}\n127.255.0.2\tb\n")
        );
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode, "the file was replaced");
    }

    #[test]
    fn writes_only_when_the_aliases_change() {
        let (_dir, path) = file_with(HOST);
        let mut hosts = HostsFile::open(&path).unwrap();
        // The first update writes even without aliases: the file gets the proxy's part.
        assert!(hosts.update(Aliases::new()).unwrap());
        assert!(hosts.update(aliases(&[("a", [127, 255, 0, 1])])).unwrap());
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"#", 0).unwrap();
        assert!(!hosts.update(aliases(&[("a", [127, 255, 0, 1])])).unwrap());
        assert!(std::fs::read_to_string(&path).unwrap().starts_with('#'), "the file was written again");
        assert!(hosts.update(aliases(&[("a", [127, 255, 0, 3])])).unwrap());
    }

    #[test]
    fn an_earlier_runs_aliases_are_not_part_of_the_header() {
        let earlier = format!("{HOST}{ALIASES_COMMENT}\n127.255.0.9\told\n");
        let (_dir, path) = file_with(&earlier);
        let mut hosts = HostsFile::open(&path).unwrap();
        hosts.update(aliases(&[("new", [127, 255, 0, 1])])).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{HOST}{ALIASES_COMMENT}\n127.255.0.1\tnew\n")
        );
    }

    #[test]
    fn a_header_without_a_final_line_break_gets_one() {
        assert_eq!(header_of("127.0.0.1 localhost"), "127.0.0.1 localhost\n");
        assert_eq!(header_of(""), "");
    }

    #[test]
    fn only_loopback_listeners_are_aliases() {
        let yaml = "admin: 127.0.0.1:0\noutbound:\n  - { dnsName: b, listen: 127.255.0.2:80, appProtocol: http, endpoints: [\"127.0.0.1:1\"] }\n  - { dnsName: a, listen: 127.0.0.1:0, appProtocol: tcp, endpoints: [\"127.0.0.1:1\"] }\n  - { dnsName: c, listen: 0.0.0.0:81, appProtocol: tcp, endpoints: [\"127.0.0.1:1\"] }\n";
        let config = tether_model::ProxyConfig::parse("test.yaml", yaml).unwrap();
        assert_eq!(
            super::aliases(&config.outbound),
            aliases(&[("a", [127, 0, 0, 1]), ("b", [127, 255, 0, 2])])
        );
    }
}
