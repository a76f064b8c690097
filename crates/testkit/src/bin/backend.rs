//! A [`Backend`](tether_testkit::Backend) in a process of its own, for tests that kill one:
//! `backend NAME` prints `listening ADDR` on stdout and serves until its stdin closes (so it
//! never outlives the test that started it) or it is killed.

use std::io::Read;

use tether_testkit::Backend;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "backend".into());
    let backend = Backend::start(&name).await;
    println!("listening {}", backend.addr);
    // Reading stdin blocks: a thread of its own waits for the test to go away.
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
        let _ = closed.send(());
    });
    let _ = stdin_closed.await;
}
