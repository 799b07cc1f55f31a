//! What a restarted daemon needs to take over without killing anything:
//! each joined lockspace's generation and nonce, every registered holder
//! (pid + start time, which together name one process) and the leases held
//! for it. Written atomically (temporary file, rename) under the run
//! directory after every change; a file from another boot is ignored.
//!
//! Not fsynced: the file only matters to a later daemon of the same boot,
//! which reads it through the page cache (a rename is atomic for every
//! reader, synced or not). After a power loss or a kernel crash it belongs
//! to an earlier boot and is ignored, even if it lost its content: a file
//! that does not parse but was last written before this boot began is
//! treated as an earlier boot's. (An fsync per acquire and per release was
//! most of the daemon's own time on a request.)

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateFile {
    pub boot_id: String,
    pub host_id: u32,
    pub lockspaces: Vec<PersistedSpace>,
    pub holders: Vec<PersistedHolder>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PersistedSpace {
    pub name: String,
    pub device: String,
    pub io_timeout_ms: u32,
    /// Added at run time (not from the config file).
    pub added: bool,
    pub generation: u64,
    pub nonce: u64,
    pub resources: Vec<PersistedResource>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PersistedResource {
    pub name: String,
    pub slot: u32,
    pub lver: u64,
    /// The holder process; 0 for a VM's lease.
    pub pid: i32,
    /// The domain UUID when the lease is held for a VM run by the daemon.
    #[serde(default)]
    pub vm: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PersistedHolder {
    pub pid: i32,
    pub start_time: u64,
}

/// This boot's id: a state file from an earlier boot describes processes
/// that no longer exist. Read once per process.
pub fn boot_id() -> String {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        })
        .clone()
}

/// When this boot began, from `btime` in /proc/stat (None if unknown).
fn boot_time() -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let seconds: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds))
}

/// Was `path` last written before this boot began (so by an earlier boot)?
fn written_before_boot(path: &Path) -> bool {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (modified, boot_time()) {
        (Some(modified), Some(booted)) => modified < booted,
        _ => false,
    }
}

pub fn write(path: &Path, state: &StateFile) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&text)?;
    }
    std::fs::rename(&temporary, path)
}

/// What a previous daemon left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Previous {
    /// No state file: a first start, or the last daemon left cleanly.
    Nothing,
    /// A daemon of this boot: its holders may still run.
    ThisBoot(StateFile),
    /// A daemon of an earlier boot: nothing it started runs any more.
    EarlierBoot,
}

/// Read the state file. A file that does not parse is an error: its
/// holders can be neither trusted nor ruled out.
pub fn read(path: &Path) -> Result<Previous, String> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Previous::Nothing),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let state: StateFile = match serde_json::from_slice(&text) {
        Ok(state) => state,
        // Torn by a power loss before it reached the disk: nothing of
        // that boot runs any more.
        Err(_) if written_before_boot(path) => return Ok(Previous::EarlierBoot),
        Err(e) => {
            return Err(format!(
                "{}: not a valid state file: {e}; if no leaseholdd of this boot ran with holders, remove it",
                path.display()
            ))
        }
    };
    if state.boot_id != boot_id() {
        return Ok(Previous::EarlierBoot);
    }
    Ok(Previous::ThisBoot(state))
}

pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_other_boot_ignored() {
        let dir = std::env::temp_dir().join(format!("leasehold-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state.json");
        let mut state = StateFile {
            boot_id: boot_id(),
            host_id: 2,
            lockspaces: vec![PersistedSpace {
                name: "ls".to_string(),
                device: "/dev/loop0".to_string(),
                io_timeout_ms: 1000,
                added: false,
                generation: 3,
                nonce: 99,
                resources: vec![PersistedResource {
                    name: "vm1".to_string(),
                    slot: 0,
                    lver: 4,
                    pid: 1234,
                    vm: None,
                }],
            }],
            holders: vec![PersistedHolder {
                pid: 1234,
                start_time: 5,
            }],
        };
        assert_eq!(read(&path).expect("read"), Previous::Nothing);
        write(&path, &state).expect("write");
        assert_eq!(
            read(&path).expect("read"),
            Previous::ThisBoot(state.clone())
        );
        state.boot_id = "another-boot".to_string();
        write(&path, &state).expect("write");
        assert_eq!(read(&path).expect("read"), Previous::EarlierBoot);
        std::fs::write(&path, b"{").expect("write");
        assert!(read(&path).is_err());
        // The same torn file, last written before this boot: an earlier
        // boot's, whose processes are gone.
        let before_boot = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(before_boot))
            .expect("set mtime");
        assert_eq!(read(&path).expect("read"), Previous::EarlierBoot);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
