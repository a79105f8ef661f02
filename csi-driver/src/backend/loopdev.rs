//! Loop devices over image files, through util-linux `losetup` (it owns the
//! loop-control protocol and its races; there is no maintained crate that
//! does so without bindgen).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run, BackendError};

pub trait Loops: Send + Sync {
    /// A new loop device over `file`, whatever others there are.
    fn attach_new(&self, file: &Path, readonly: bool) -> Result<PathBuf, BackendError>;
    /// A loop device over `file` that is read-only, or writable, as asked: a
    /// block volume staged writable may also have read-only devices of its
    /// read-only publications.
    fn find(&self, file: &Path, readonly: bool) -> Result<Option<PathBuf>, BackendError>;
    /// Detach; a device still mounted is freed when its last user goes.
    fn detach(&self, device: &Path) -> Result<(), BackendError>;
    /// Re-read the backing file's size after it grew.
    fn refresh(&self, device: &Path) -> Result<(), BackendError>;
}

pub struct LosetupLoops;

fn losetup(args: &[&str]) -> Result<String, BackendError> {
    let out = Command::new("losetup")
        .args(args)
        .output()
        .map_err(|e| BackendError::Command {
            program: "losetup".into(),
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(BackendError::Command {
            program: "losetup".into(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Loops for LosetupLoops {
    fn attach_new(&self, file: &Path, readonly: bool) -> Result<PathBuf, BackendError> {
        let f = file.to_string_lossy();
        let mut args = vec!["--find", "--show", "--direct-io=on"];
        if readonly {
            args.push("--read-only");
        }
        args.push(&f);
        Ok(PathBuf::from(losetup(&args)?))
    }

    fn find(&self, file: &Path, readonly: bool) -> Result<Option<PathBuf>, BackendError> {
        let f = file.to_string_lossy();
        let out = losetup(&["--noheadings", "--output", "NAME,RO", "--associated", &f])?;
        let want = if readonly { "1" } else { "0" };
        Ok(out
            .lines()
            .filter_map(|l| l.trim().split_once(char::is_whitespace))
            .find(|(_, ro)| ro.trim() == want)
            .map(|(name, _)| PathBuf::from(name)))
    }

    fn detach(&self, device: &Path) -> Result<(), BackendError> {
        run("losetup", &["--detach", &device.to_string_lossy()])
    }

    fn refresh(&self, device: &Path) -> Result<(), BackendError> {
        run("losetup", &["--set-capacity", &device.to_string_lossy()])
    }
}
