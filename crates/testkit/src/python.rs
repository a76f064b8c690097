//! Python peers (grpcio, h2): which interpreter runs them, and a clear failure when a package
//! they need is missing.

use tokio::process::Command;

/// The Python interpreter: `$PYTHON`, or `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails the test, saying what to install, when Python cannot `import module` (from the pip
/// package `package`).
pub async fn require_python_module(module: &str, package: &str) {
    let probe = Command::new(python()).args(["-c", &format!("import {module}")]).output().await;
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "these tests need Python's {package} package: pip install {package}\n({} -c 'import {module}' said: {})",
            python(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "these tests need Python 3 with {package} (pip install {package}); cannot run {}: {e}",
            python()
        ),
    }
}
