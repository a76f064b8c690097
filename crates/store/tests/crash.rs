//! F11: the embedded store SIGKILLed at random moments during write bursts. Every reopen must
//! succeed and every write the store acknowledged must be there.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tether_store::{Embedded, Store};

const RUNS: u64 = 20;
/// Concurrent writer tasks in each burst.
const TASKS: &str = "8";

#[test]
fn f11_every_acknowledged_write_survives_sigkill_mid_burst() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut random = Lcg::seeded();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for run in 0..RUNS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-burst"))
            .arg(dir.path())
            .arg(run.to_string())
            .arg(TASKS)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = read_lines(&mut child);
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(ready) if ready == "ready" => {}
            other => {
                let _ = child.kill();
                panic!(
                    "run {run}: the store did not open after the previous kill: {other:?}, {:?}",
                    child.wait()
                );
            }
        }
        // Anywhere from the first commits to well into the burst.
        std::thread::sleep(Duration::from_millis(random.below(250)));
        child.kill().unwrap();
        child.wait().unwrap();
        let acked_now: Vec<(String, String)> = lines
            .iter()
            .map(|line| {
                let (key, value) =
                    line.split_once(' ').unwrap_or_else(|| panic!("run {run}: odd line {line:?}"));
                (key.to_owned(), value.to_owned())
            })
            .collect();
        acknowledged.extend(acked_now);
        runtime.block_on(assert_all_present(dir.path(), &acknowledged, run));
    }
    assert!(acknowledged.len() as u64 > RUNS, "the bursts hardly wrote anything: {}", acknowledged.len());
}

async fn assert_all_present(dir: &Path, acknowledged: &[(String, String)], run: u64) {
    let store = Embedded::open(dir).unwrap_or_else(|e| panic!("run {run}: reopening failed: {e}"));
    let listing = store.list("burst/").await.unwrap();
    let stored: std::collections::HashMap<&str, &[u8]> =
        listing.items.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())).collect();
    for (key, value) in acknowledged {
        assert_eq!(
            stored.get(key.as_str()).map(|v| String::from_utf8_lossy(v)),
            Some(value.into()),
            "run {run}: {key} was acknowledged but is not in the store"
        );
    }
}

/// Complete lines from the child's stdout, as they come. A last line the kill cut short (no
/// newline) is dropped: it was never fully promised.
fn read_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.last() != Some(&b'\n') => return,
                Ok(_) => {
                    line.pop();
                    if lines.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    receiver
}

/// Kill moments differ from run to run and from test to test; no crate needed for that.
struct Lcg(u64);

impl Lcg {
    fn seeded() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        eprintln!("kill timing seed {nanos}");
        Lcg(nanos)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}
