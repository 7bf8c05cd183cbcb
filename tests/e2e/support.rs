//! Helpers shared by the end-to-end tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run the real binary with `args`, feeding `stdin`.
pub fn switchyard(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    // The command may exit before reading its input (e.g. a missing file): a broken pipe
    // here is not the test's concern, the exit status and stderr are.
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin);
    }
    child.wait_with_output().unwrap()
}

/// A Python interpreter with pyiso8583 installed.
///
/// `SWITCHYARD_PYTHON` names one explicitly (`.ci/run` prepares a venv under `target/`);
/// otherwise a venv is created under cargo's target tmp directory on first use. Failing to
/// get one fails the interop tests: they are never skipped silently.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(p) = std::env::var_os("SWITCHYARD_PYTHON") {
            return PathBuf::from(p);
        }
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-venv");
        let python = venv.join("bin/python");
        let ready = |p: &Path| {
            Command::new(p)
                .args(["-c", "import iso8583"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !ready(&python) {
            let status = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "python3 -m venv failed: install python3 and python3-venv"
            );
            let status = Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg(format!("pyiso8583=={PYISO8583_VERSION}"))
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "pip install pyiso8583 failed"
            );
        }
        assert!(ready(&python), "{} cannot import iso8583", python.display());
        python
    })
}

/// The pyiso8583 release the interop suite is pinned to.
pub const PYISO8583_VERSION: &str = "4.0.1";

/// The JSON lines a command printed, after it succeeded.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
