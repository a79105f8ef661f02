//! Loop devices over image files, through util-linux `losetup` (it owns the
//! loop-control protocol and its races; there is no maintained crate that
//! does so without bindgen).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run, BackendError};

pub trait Loops: Send + Sync {
    /// A new loop device over `file`, whatever others there are.
    fn attach_new(&self, file: &Path, readonly: bool) -> Result<PathBuf, BackendError>;
    /// Every loop device over `file`, and whether it is read-only: a block
    /// volume may have a stage's device and read-only ones of its read-only
    /// publications.
    fn associated(&self, file: &Path) -> Result<Vec<(PathBuf, bool)>, BackendError>;
    /// A loop device over `file` that is read-only, or writable, as asked.
    fn find(&self, file: &Path, readonly: bool) -> Result<Option<PathBuf>, BackendError> {
        Ok(self
            .associated(file)?
            .into_iter()
            .find(|(_, ro)| *ro == readonly)
            .map(|(dev, _)| dev))
    }
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

    fn associated(&self, file: &Path) -> Result<Vec<(PathBuf, bool)>, BackendError> {
        let f = file.to_string_lossy();
        let out = losetup(&["--noheadings", "--output", "NAME,RO", "--associated", &f])?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().split_once(char::is_whitespace))
            .map(|(name, ro)| (PathBuf::from(name), ro.trim() == "1"))
            .collect())
    }

    fn detach(&self, device: &Path) -> Result<(), BackendError> {
        run("losetup", &["--detach", &device.to_string_lossy()])
    }

    fn refresh(&self, device: &Path) -> Result<(), BackendError> {
        run("losetup", &["--set-capacity", &device.to_string_lossy()])
    }
}
