//! The filesystem programs: mkfs and the online grow tools. There is no
//! syscall for these; they run on blocking threads.

use std::path::Path;
use std::process::Command;

use super::BackendError;

pub fn supported_fs(fs: &str) -> bool {
    matches!(fs, "ext4" | "xfs" | "btrfs")
}

/// The smallest image each mkfs accepts.
pub fn min_size(fs: &str) -> u64 {
    const MIB: u64 = 1 << 20;
    match fs {
        "xfs" => 300 * MIB,
        "btrfs" => 128 * MIB,
        _ => 8 * MIB,
    }
}

pub fn run(program: &str, args: &[&str]) -> Result<(), BackendError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| BackendError::Command {
            program: program.into(),
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(BackendError::Command {
        program: program.into(),
        args: args.join(" "),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

pub fn mkfs(fs: &str, image: &Path) -> Result<(), BackendError> {
    let img = image.to_string_lossy();
    match fs {
        // No discard: it would walk the whole sparse file.
        "ext4" => run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=1",
                "-m",
                "0",
                &img,
            ],
        ),
        "xfs" => run("mkfs.xfs", &["-q", "-f", "-K", &img]),
        "btrfs" => run("mkfs.btrfs", &["-q", "-f", "-K", &img]),
        other => Err(BackendError::Command {
            program: "mkfs".into(),
            args: other.into(),
            stderr: "unsupported filesystem".into(),
        }),
    }
}

/// Grow a mounted filesystem to its device's size.
pub fn grow_fs(fs: &str, device: &Path, mount_point: &Path) -> Result<(), BackendError> {
    let (dev, mnt) = (device.to_string_lossy(), mount_point.to_string_lossy());
    match fs {
        "ext4" => run("resize2fs", &[&dev]),
        "xfs" => run("xfs_growfs", &[&mnt]),
        "btrfs" => run("btrfs", &["filesystem", "resize", "max", &mnt]),
        _ => Ok(()),
    }
}
