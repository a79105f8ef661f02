//! Crash-safe file replacement: a reader sees the old file or the new one, never half.
//!
//! Two strengths. [`write_atomic`] survives a power cut (fsync of the file and
//! its directory): for the operator's policy. [`replace`] survives a crash of
//! the process at any point (the page cache keeps what was renamed into
//! place) but not a power cut: for IPAM state, which describes veths and
//! routes that do not survive a power cut either. After one, every pod is
//! gone; a record lost with it frees an address no live pod holds, and one
//! that survives is released by GC.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Write `bytes` to `dir/name` via a temp file, fsync and rename, then fsync `dir`.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_temp_and_rename(dir, name, bytes, true)?;
    sync_dir(dir)
}

/// Write `bytes` to `dir/name` via a temp file and a rename, without fsync.
pub fn replace(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_temp_and_rename(dir, name, bytes, false)
}

/// The temp file a write of `name` goes through. Every writer of one of our
/// files holds the network's lock, so one temp name per file is enough, and a
/// crashed writer's leftover is found by name and overwritten by the next.
pub fn temp_name(name: &str) -> String {
    format!(".tmp.{name}")
}

fn write_temp_and_rename(dir: &Path, name: &str, bytes: &[u8], sync: bool) -> io::Result<()> {
    let tmp = dir.join(temp_name(name));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_data()?;
    }
    drop(f);
    fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Open `path` with `opts`, creating its directory only when the open says
/// it is missing: on the hot path that is one syscall instead of three.
pub fn open_creating_dir(opts: &OpenOptions, path: &Path) -> io::Result<File> {
    match opts.open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            opts.open(path)
        }
        r => r,
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Remove temp files left by a writer that died before its rename.
pub fn remove_stale_temps(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".tmp.") {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Replace the JSON file at `path` (creating its directory) crash-safely.
pub fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(dir, name, &json)
}
