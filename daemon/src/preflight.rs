//! `leaseholdd --check-config`: mistakes a valid configuration can still
//! hold, caught before they matter (at the first failover, or never).
//! Each problem names the setting and what to do. The daemon itself
//! starts with them (a host may be set up in steps); the check does not
//! pass.

use crate::config::{Config, Fence};
use std::path::{Path, PathBuf};

/// Agents that fence through storage and take no credentials.
const CREDENTIAL_FREE_AGENTS: [&str; 3] = ["fence_scsi", "fence_mpath", "fence_sbd"];

/// Option keys through which an agent gets its credentials instead of
/// the secrets file.
const CREDENTIAL_OPTIONS: [&str; 4] = ["password", "passwd", "password_script", "identity_file"];

/// Where an agent named without a path is looked for: PATH, then the
/// directories fence-agents installs to.
fn find_program(name: &str, path_var: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let path = PathBuf::from(name);
        return executable(&path).then_some(path);
    }
    path_var
        .unwrap_or("")
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| executable(p))
}

/// Every problem of `config` (empty: the check passes).
pub fn problems(config: &Config) -> Vec<String> {
    problems_with_path(config, std::env::var("PATH").ok().as_deref())
}

fn problems_with_path(config: &Config, path_var: Option<&str>) -> Vec<String> {
    let file = config.file.display();
    let mut found = Vec::new();
    if let Some(device) = &config.watchdog_device {
        if !device.exists() {
            found.push(format!(
                "{file}: watchdog.device {} does not exist (load the watchdog driver, e.g. `modprobe softdog`, or fix the path)",
                device.display()
            ));
        }
    }
    if !config.cluster.is_empty() && config.own_cluster_entry().is_none() {
        found.push(format!(
            "{file}: this host (id {}, {:?}) is not in [[cluster.hosts]]: the others cannot fence it, and it plans failover without itself; add it",
            config.host_id, config.host_name
        ));
    }
    for (index, hook) in config.hooks.hooks.iter().enumerate() {
        if find_program(&hook.program, path_var).is_none() {
            found.push(format!(
                "{file}: hooks.run[{index}].program {} is not an executable file: the hook would fail at every {}",
                hook.program,
                hook.events.join(", ")
            ));
        }
    }
    for host in &config.cluster {
        let has_password = config.passwords.contains_key(&host.name);
        match &host.fence {
            Fence::Ipmi { address, port, .. } if !has_password => found.push(format!(
                "{file}: host {} ({}) is fenced over IPMI ({address}:{port}) but the secrets file has no password for it: add [hosts.{}] password = \"...\"",
                host.id, host.name, host.name
            )),
            Fence::Agent { agent, options } => {
                if find_program(agent, path_var).is_none() {
                    found.push(format!(
                        "{file}: host {} ({}) is fenced by {agent}, which is not installed (not found in PATH, /usr/sbin or /sbin): install fence-agents, or fix the name",
                        host.id, host.name
                    ));
                }
                let free = CREDENTIAL_FREE_AGENTS
                    .iter()
                    .any(|a| Path::new(agent).file_name() == Some(std::ffi::OsStr::new(a)));
                let in_options = options.keys().any(|k| CREDENTIAL_OPTIONS.contains(&k.as_str()));
                if !has_password && !free && !in_options {
                    found.push(format!(
                        "{file}: host {} ({}) is fenced by {agent} but the secrets file has no password for it: add [hosts.{}] password = \"...\"",
                        host.id, host.name, host.name
                    ));
                }
            }
            _ => {}
        }
    }
    let own_fence = config.own_cluster_entry().map(|h| &h.fence);
    if config.watchdog_device.is_none() && matches!(own_fence, None | Some(Fence::None)) {
        found.push(format!(
            "{file}: this host has neither a fence device nor a watchdog: if it hangs, its VMs are never restarted elsewhere; configure fence for it in [[cluster.hosts]] or set watchdog.device"
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(Path::new("/etc/leasehold/leasehold.toml"), text).expect("valid")
    }

    const BASE: &str =
        "[host]\nid = 1\nname = \"hv01\"\n[lockspace]\nname = \"prod\"\ndevice = \"/dev/sdb\"\n";

    #[test]
    fn a_complete_configuration_passes() {
        let c = config(&format!(
            "{BASE}[watchdog]\ndevice = \"/dev/null\"\n[[cluster.hosts]]\nid = 1\nname = \"hv01\"\nfence = {{ method = \"agent\", agent = \"fence_scsi\", options = {{ devices = \"/dev/sdb\" }} }}\n"
        ));
        assert_eq!(
            problems_with_path(&c, Some("/nonexistent")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_mistake_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let secrets =
            std::env::temp_dir().join(format!("lh-preflight-{}.toml", std::process::id()));
        std::fs::write(&secrets, "[hosts.hv02]\npassword = \"x\"\n").expect("secrets");
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = config(&format!(
            "{BASE}[paths]\nsecrets = \"{}\"\n[watchdog]\ndevice = \"/dev/no-such-watchdog\"\n[[cluster.hosts]]\nid = 2\nname = \"hv02\"\nfence = {{ method = \"ipmi\", address = \"10.0.0.2\", user = \"admin\" }}\n[[cluster.hosts]]\nid = 3\nname = \"hv03\"\nfence = {{ method = \"agent\", agent = \"fence_no_such_agent\" }}\n[[hooks.run]]\nevents = [\"fenced\"]\nprogram = \"/nonexistent/page-oncall\"\n",
            secrets.display()
        ));
        let _ = std::fs::remove_file(&secrets);
        let found = problems_with_path(&c, Some("/nonexistent")).join("\n");
        assert!(
            found.contains("/dev/no-such-watchdog does not exist"),
            "{found}"
        );
        assert!(found.contains("not in [[cluster.hosts]]"), "{found}");
        // (An IPMI host without a password fails the load itself.)
        assert!(!found.contains("hv02"), "{found}");
        assert!(
            found.contains("fence_no_such_agent, which is not installed"),
            "{found}"
        );
        assert!(found.contains("host 3 (hv03) is fenced by fence_no_such_agent but the secrets file has no password"), "{found}");
        assert!(
            found.contains(
                "hooks.run[0].program /nonexistent/page-oncall is not an executable file"
            ),
            "{found}"
        );
        // No cluster section, no watchdog: nothing can ever take over.
        let bare = problems_with_path(&config(BASE), None).join("\n");
        assert!(
            bare.contains("neither a fence device nor a watchdog"),
            "{bare}"
        );
    }
}
