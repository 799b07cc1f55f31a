//! The plugin's configuration file, `qemu-leasehold.conf` (the path libvirt
//! passes to drvInit: /etc/libvirt/qemu-leasehold.conf for the system
//! daemon). libvirt's conf syntax, `key = value` per line, `#` comments:
//!
//! ```text
//! socket = "/run/leasehold/leaseholdd.sock"
//! allow_disks_without_lease = 1
//! ```
//!
//! A missing file means the defaults; unknown keys are ignored (a newer
//! file on an older plugin), a malformed line is an error naming it.

use std::path::PathBuf;

pub const DEFAULT_SOCKET: &str = leasehold_daemon::config::DEFAULT_SOCKET_PATH;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConfig {
    /// leaseholdd's control socket.
    pub socket: PathBuf,
    /// May a VM with disks but no `<lease>` start? (It is then not
    /// protected against a second start elsewhere.)
    pub allow_disks_without_lease: bool,
}

impl Default for PluginConfig {
    fn default() -> PluginConfig {
        PluginConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            allow_disks_without_lease: true,
        }
    }
}

pub fn parse(text: &str, file: &str) -> Result<PluginConfig, String> {
    let mut config = PluginConfig::default();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "{file}: line {}: expected `key = value`, found {raw:?}",
                number + 1
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "socket" => {
                let unquoted = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .ok_or_else(|| {
                        format!("{file}: line {}: socket must be a quoted path", number + 1)
                    })?;
                if !unquoted.starts_with('/') {
                    return Err(format!(
                        "{file}: line {}: socket {unquoted:?} is not an absolute path",
                        number + 1
                    ));
                }
                config.socket = PathBuf::from(unquoted);
            }
            "allow_disks_without_lease" => {
                config.allow_disks_without_lease = match value {
                    "0" => false,
                    "1" => true,
                    other => {
                        return Err(format!(
                        "{file}: line {}: allow_disks_without_lease is {other:?} (allowed: 0 or 1)",
                        number + 1
                    ))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(config)
}

/// The configuration at `path`; the defaults when the file does not exist.
pub fn load(path: Option<&str>) -> Result<PluginConfig, String> {
    let Some(path) = path else {
        return Ok(PluginConfig::default());
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PluginConfig::default()),
        Err(e) => Err(format!("{path}: cannot read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_comments_defaults_and_errors() {
        let config = parse(
            "# leasehold\nsocket = \"/tmp/x.sock\"  # here\nallow_disks_without_lease = 0\nfuture_key = 3\n",
            "f",
        );
        assert_eq!(
            config,
            Ok(PluginConfig {
                socket: PathBuf::from("/tmp/x.sock"),
                allow_disks_without_lease: false
            })
        );
        assert_eq!(parse("", "f"), Ok(PluginConfig::default()));
        assert!(parse("socket = relative", "f").is_err_and(|e| e.contains("line 1")));
        assert!(parse("allow_disks_without_lease = yes", "f").is_err_and(|e| e.contains("0 or 1")));
        assert!(parse("nonsense", "f").is_err());
    }
}
