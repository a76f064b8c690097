//! Commits a burst of keys to the embedded store in DIR from several concurrent tasks, printing
//! each key on stdout only once its commit was acknowledged. The F11 crash test SIGKILLs it
//! mid-burst and checks that every printed key survived.
//!
//! Usage: `store-burst DIR TAG [TASKS] [KEYS_PER_TASK]`. Prints `ready` once the store is open,
//! then one `key value` line per acknowledged commit.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tether_store::{Embedded, Store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(tag)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: store-burst DIR TAG [TASKS] [KEYS_PER_TASK]");
        return ExitCode::from(64);
    };
    let tasks: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(8);
    let each: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("store-burst: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(burst(PathBuf::from(dir), tag, tasks, each)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-burst: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn burst(dir: PathBuf, tag: &str, tasks: usize, each: usize) -> tether_store::Result<()> {
    let store = Embedded::open(&dir)?;
    println!("ready");
    let began = Instant::now();
    let writers: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, tag) = (store.clone(), tag.to_owned());
            tokio::spawn(async move {
                for i in 0..each {
                    let key = format!("burst/{tag}/{task}/{i}");
                    let value = format!("{tag}-{task}-{i}");
                    store.put(&key, value.clone().into_bytes()).await?;
                    // Printed only now, after the commit returned: a line is a promise that the
                    // key is on disk. (A kill may cut the last line short; the test drops it.)
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{key} {value}").and_then(|()| stdout.flush());
                }
                tether_store::Result::Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.await.map_err(|e| tether_store::Error::Other(format!("a writer task failed: {e}")))??;
    }
    let seconds = began.elapsed().as_secs_f64();
    eprintln!("{} commits in {seconds:.2} s: {:.0}/s", tasks * each, (tasks * each) as f64 / seconds);
    Ok(())
}
