//! A small tmpfs the drill mounts for itself, to run a disk store out of space without touching
//! the machine's disks: mounted on a fresh folder, unmounted and removed on drop, panics
//! included. Mounting needs root (or CAP_SYS_ADMIN); [`Tmpfs::mount`] says why it could not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
pub struct Tmpfs {
    dir: Option<tempfile::TempDir>,
    filler: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB, or says why it cannot.
    pub fn mount(mib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("no folder to mount on: {e}"))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (it needs root or CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let filler = dir.path().join("filler");
        Ok(Tmpfs {
            dir: Some(dir),
            filler,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }

    /// Bytes left for writers.
    pub fn free_bytes(&self) -> u64 {
        let fs = rustix::fs::statvfs(self.path()).expect("statvfs");
        fs.f_bavail * fs.f_frsize
    }

    /// Writes a filler file until at most `leave` bytes are free, as another process filling
    /// the disk would.
    pub fn fill_leaving(&self, leave: u64) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .expect("filler file");
        let chunk = vec![0xa5u8; 64 * 1024];
        while self.free_bytes() > leave {
            let left = usize::try_from(self.free_bytes() - leave).unwrap_or(usize::MAX);
            if file.write_all(&chunk[..left.min(chunk.len())]).is_err() {
                break;
            }
            file.flush().ok();
        }
    }

    /// Deletes the filler file: the space comes back.
    pub fn free_filler(&self) {
        std::fs::remove_file(&self.filler).expect("remove the filler file");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            // Lazily: a process of the drill may still hold a file open on it.
            let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
            drop(dir);
        }
    }
}
