//! The daemon's configuration file (TOML, `/etc/leasehold/leasehold.toml` by
//! default) and its validation. Every problem is reported as one
//! [`ConfigError`] naming the file, the key, what is wrong and what is
//! allowed, before anything touches the lease device.

use lease::timeouts::{Timeouts, IO_TIMEOUT_MS_DEFAULT, IO_TIMEOUT_MS_MAX, IO_TIMEOUT_MS_MIN};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/leasehold/leasehold.toml";
pub const DEFAULT_SOCKET_PATH: &str = "/run/leasehold/leaseholdd.sock";
pub const DEFAULT_RUN_DIR: &str = "/run/leasehold";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/leasehold";
pub const DEFAULT_EVENT_LOG: &str = "/var/lib/leasehold/events.jsonl";
pub const DEFAULT_LIBVIRT_URI: &str = "qemu:///system";
/// How long one libvirt call may take before the daemon stops waiting for
/// it (a QEMU start with much memory to allocate can take a while).
pub const DEFAULT_LIBVIRT_CALL_TIMEOUT_MS: u64 = 30_000;
/// Share of hosts that may go silent within one expiry window before it is
/// taken as a storage or network incident rather than host failures.
pub const DEFAULT_STORAGE_INCIDENT_SHARE: f64 = 0.5;
/// `monitor.fence_check_interval_ms`: each other host's fence device is
/// checked every 5 minutes.
pub const DEFAULT_FENCE_CHECK_INTERVAL_MS: u64 = 300_000;
/// Admission control keeps room for every HA VM after this many host losses.
pub const DEFAULT_HOST_FAILURES_TO_TOLERATE: u32 = 1;
/// How long the next host in a VM's restart order waits for the one before
/// it to get the VM running.
pub const DEFAULT_RESTART_GRACE_MS: u64 = 10_000;
/// Failed restarts in a row after which a VM is marked failed.
pub const DEFAULT_RESTART_ATTEMPTS: u32 = 3;
/// `[metrics]` without `listen`: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9720";

/// A configuration problem: where, what, and what would be accepted.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}{}", allowed.as_ref().map(|a| format!(" (allowed: {a})")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    /// The dotted key, or "-" for the file as a whole.
    pub key: String,
    pub problem: String,
    pub allowed: Option<String>,
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    host: FileHost,
    lockspace: FileLockspace,
    #[serde(default)]
    control: FileControl,
    #[serde(default)]
    watchdog: FileWatchdog,
    #[serde(default)]
    libvirt: FileLibvirt,
    #[serde(default)]
    paths: FilePaths,
    #[serde(default)]
    capacity: FileCapacity,
    #[serde(default)]
    monitor: FileMonitor,
    #[serde(default)]
    cluster: FileCluster,
    #[serde(default)]
    failover: FileFailover,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    hooks: FileHooks,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    enabled: Option<bool>,
    listen: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileHooks {
    timeout_ms: Option<u64>,
    #[serde(default)]
    run: Vec<FileHook>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileHook {
    events: Vec<String>,
    program: String,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileHost {
    id: u32,
    name: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileLockspace {
    name: String,
    device: String,
    io_timeout_ms: Option<u32>,
    io_engine: Option<String>,
    sector_size_bytes: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileControl {
    socket: Option<String>,
    group: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileWatchdog {
    device: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileLibvirt {
    uri: Option<String>,
    call_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FilePaths {
    run_dir: Option<String>,
    state_dir: Option<String>,
    event_log: Option<String>,
    secrets: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileCapacity {
    memory_mib: Option<u32>,
    vcpus: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileMonitor {
    storage_incident_share: Option<f64>,
    fence_check_interval_ms: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileFailover {
    host_failures_to_tolerate: Option<u32>,
    restart_grace_ms: Option<u64>,
    restart_attempts: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    #[serde(default)]
    hosts: Vec<FileClusterHost>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileClusterHost {
    id: u32,
    name: String,
    fence: FileFence,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileFence {
    method: String,
    address: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    cipher: Option<u8>,
    privilege: Option<String>,
    agent: Option<String>,
    #[serde(default)]
    options: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSecrets {
    #[serde(default)]
    hosts: BTreeMap<String, FileHostSecret>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileHostSecret {
    password: String,
}

// ---- the validated configuration ----------------------------------------

/// I/O engine for the lease device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngine {
    Uring,
    Pread,
}

/// How one cluster host is fenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Native IPMI over LAN (RMCP+).
    Ipmi {
        address: String,
        port: u16,
        user: String,
        cipher: u8,
        privilege: String,
    },
    /// A standard fence agent, given `options` as key=value lines.
    Agent {
        agent: String,
        options: BTreeMap<String, String>,
    },
    /// No fence device: the host relies on its watchdog.
    None,
}

impl Fence {
    pub fn method(&self) -> lease::format::FenceMethod {
        match self {
            Fence::Ipmi { .. } => lease::format::FenceMethod::Ipmi,
            Fence::Agent { .. } => lease::format::FenceMethod::Agent,
            Fence::None => lease::format::FenceMethod::None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClusterHost {
    pub id: u32,
    pub name: String,
    pub fence: Fence,
}

/// A password kept out of logs and debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub host_id: u32,
    pub host_name: String,
    pub lockspace: String,
    pub device: String,
    pub io_timeout_ms: u32,
    pub io_engine: IoEngine,
    pub sector_size_bytes: Option<u32>,
    pub socket: PathBuf,
    /// Members of this group (gid) may use the control socket besides root.
    pub socket_group: Option<(String, u32)>,
    /// Watchdog device; None runs without one (fencing is then required).
    pub watchdog_device: Option<PathBuf>,
    pub libvirt_uri: String,
    /// The longest the daemon waits for one libvirt call; past it the
    /// call's outcome is unknown (see daemon/src/hypervisor.rs).
    pub libvirt_call_timeout_ms: u64,
    pub run_dir: PathBuf,
    /// Survives reboots: the state file (holders to take over, and the boot
    /// they ran in).
    pub state_dir: PathBuf,
    pub event_log: PathBuf,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u32>,
    pub storage_incident_share: f64,
    /// How often each other host's fence device is checked (0: never).
    pub fence_check_interval_ms: u64,
    pub failover: Failover,
    pub cluster: Vec<ClusterHost>,
    /// BMC passwords by host name, from the secrets file.
    pub passwords: BTreeMap<String, Secret>,
    /// Where the metrics and the status page are served (None: off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub hooks: crate::hooks::HooksConfig,
}

/// The `[failover]` section: restart of a dead host's VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failover {
    pub host_failures_to_tolerate: u32,
    pub restart_grace_ms: u64,
    pub restart_attempts: u32,
}

impl Default for Failover {
    fn default() -> Failover {
        Failover {
            host_failures_to_tolerate: DEFAULT_HOST_FAILURES_TO_TOLERATE,
            restart_grace_ms: DEFAULT_RESTART_GRACE_MS,
            restart_attempts: DEFAULT_RESTART_ATTEMPTS,
        }
    }
}

impl Config {
    /// The settings that differ between this configuration and `new` (the
    /// file re-read), by the name an operator knows them by. Passwords are
    /// compared, never shown.
    pub fn changed_settings(&self, new: &Config) -> Vec<&'static str> {
        let passwords = |c: &Config| -> Vec<(String, String)> {
            c.passwords
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect()
        };
        let checks: [(&'static str, bool); 20] = [
            ("host.id", self.host_id != new.host_id),
            ("host.name", self.host_name != new.host_name),
            ("lockspace.name", self.lockspace != new.lockspace),
            ("lockspace.device", self.device != new.device),
            (
                "lockspace.io_timeout_ms",
                self.io_timeout_ms != new.io_timeout_ms,
            ),
            ("lockspace.io_engine", self.io_engine != new.io_engine),
            (
                "lockspace.sector_size_bytes",
                self.sector_size_bytes != new.sector_size_bytes,
            ),
            (
                "control",
                self.socket != new.socket || self.socket_group != new.socket_group,
            ),
            (
                "watchdog.device",
                self.watchdog_device != new.watchdog_device,
            ),
            (
                "libvirt",
                self.libvirt_uri != new.libvirt_uri
                    || self.libvirt_call_timeout_ms != new.libvirt_call_timeout_ms,
            ),
            (
                "paths",
                self.run_dir != new.run_dir
                    || self.state_dir != new.state_dir
                    || self.event_log != new.event_log,
            ),
            (
                "capacity",
                self.memory_mib != new.memory_mib || self.vcpus != new.vcpus,
            ),
            (
                "monitor.fence_check_interval_ms",
                self.fence_check_interval_ms != new.fence_check_interval_ms,
            ),
            (
                "monitor.storage_incident_share",
                self.storage_incident_share.to_bits() != new.storage_incident_share.to_bits(),
            ),
            ("failover", self.failover != new.failover),
            (
                "cluster.hosts",
                format!("{:?}", self.cluster) != format!("{:?}", new.cluster),
            ),
            ("secrets", passwords(self) != passwords(new)),
            ("metrics", self.metrics_listen != new.metrics_listen),
            ("hooks", self.hooks != new.hooks),
            ("file", self.file != new.file),
        ];
        checks
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(name, _)| name)
            .collect()
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts::from_io_timeout_ms(self.io_timeout_ms)
    }

    /// This host's entry in the cluster section, if listed.
    pub fn own_cluster_entry(&self) -> Option<&ClusterHost> {
        self.cluster.iter().find(|h| h.id == self.host_id)
    }

    /// How this host can be fenced by the others.
    pub fn own_fence_method(&self) -> lease::format::FenceMethod {
        self.own_cluster_entry()
            .map(|h| h.fence.method())
            .unwrap_or(lease::format::FenceMethod::None)
    }
}

struct Checker<'a> {
    file: &'a str,
}

impl Checker<'_> {
    fn error(&self, key: &str, problem: impl Into<String>, allowed: Option<&str>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: key.to_string(),
            problem: problem.into(),
            allowed: allowed.map(str::to_string),
        }
    }

    fn name(&self, key: &str, value: &str, max_bytes: usize) -> Result<(), ConfigError> {
        if value.is_empty() || value.len() > max_bytes || value.contains('\0') {
            return Err(self.error(
                key,
                format!("{value:?} is not a valid name"),
                Some(&format!("1..={max_bytes} bytes, no NUL")),
            ));
        }
        Ok(())
    }

    fn absolute(&self, key: &str, value: &str) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(value);
        if !path.is_absolute() {
            return Err(self.error(
                key,
                format!("{value:?} is not an absolute path"),
                Some("an absolute path"),
            ));
        }
        Ok(path)
    }
}

/// Read and validate the configuration at `path`, and the secrets file it
/// names. Nothing here opens the lease device.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let check = Checker { file: &file };
    let text = std::fs::read_to_string(path).map_err(|e| {
        check.error(
            "-",
            format!("cannot read the configuration file: {e}"),
            Some("a readable TOML file; pass another path with --config"),
        )
    })?;
    parse(path, &text)
}

/// Validate configuration `text` as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let check = Checker { file: &file };
    let raw: FileConfig = toml::from_str(text).map_err(|e| {
        let problem = e.message().to_string();
        let key = match e.span() {
            Some(span) => {
                let line = text
                    .get(..span.start)
                    .map(|s| s.lines().count().max(1))
                    .unwrap_or(0);
                format!("line {line}")
            }
            None => "-".to_string(),
        };
        check.error(&key, problem, None)
    })?;

    let host_id = raw.host.id;
    if !(1..=lease::format::HOSTS_MAX).contains(&host_id) {
        return Err(check.error(
            "host.id",
            format!("{host_id} is out of range"),
            Some(&format!("1..={}", lease::format::HOSTS_MAX)),
        ));
    }
    check.name("host.name", &raw.host.name, lease::format::HOST_NAME_BYTES)?;
    check.name(
        "lockspace.name",
        &raw.lockspace.name,
        lease::format::LOCKSPACE_NAME_BYTES,
    )?;
    let device = check.absolute("lockspace.device", &raw.lockspace.device)?;
    let io_timeout_ms = raw.lockspace.io_timeout_ms.unwrap_or(IO_TIMEOUT_MS_DEFAULT);
    if Timeouts::validate_io_timeout_ms(io_timeout_ms).is_err() {
        return Err(check.error(
            "lockspace.io_timeout_ms",
            format!("{io_timeout_ms} is out of range"),
            Some(&format!(
                "{IO_TIMEOUT_MS_MIN}..={IO_TIMEOUT_MS_MAX} milliseconds"
            )),
        ));
    }
    let io_engine = match raw.lockspace.io_engine.as_deref() {
        None | Some("uring") => IoEngine::Uring,
        Some("pread") => IoEngine::Pread,
        Some(other) => {
            return Err(check.error(
                "lockspace.io_engine",
                format!("unknown engine {other:?}"),
                Some("\"uring\" (default) or \"pread\""),
            ))
        }
    };
    if let Some(size) = raw.lockspace.sector_size_bytes {
        if size != 512 && size != 4096 {
            return Err(check.error(
                "lockspace.sector_size_bytes",
                format!("{size} is not a supported sector size"),
                Some("512 or 4096"),
            ));
        }
    }

    let socket = check.absolute(
        "control.socket",
        raw.control.socket.as_deref().unwrap_or(DEFAULT_SOCKET_PATH),
    )?;
    let socket_group = match raw.control.group {
        None => None,
        Some(group) => {
            let found = nix::unistd::Group::from_name(&group).map_err(|e| {
                check.error(
                    "control.group",
                    format!("cannot look up {group:?}: {e}"),
                    None,
                )
            })?;
            let Some(found) = found else {
                return Err(check.error(
                    "control.group",
                    format!("no group named {group:?} on this host"),
                    Some("an existing group name (create it with groupadd)"),
                ));
            };
            Some((group, found.gid.as_raw()))
        }
    };
    let watchdog_device = match raw.watchdog.device.as_deref() {
        None | Some("none") => None,
        Some(device) => Some(check.absolute("watchdog.device", device)?),
    };
    let libvirt_uri = raw
        .libvirt
        .uri
        .unwrap_or_else(|| DEFAULT_LIBVIRT_URI.to_string());
    if !libvirt_uri.contains(":///") && !libvirt_uri.contains("://") {
        return Err(check.error(
            "libvirt.uri",
            format!("{libvirt_uri:?} is not a libvirt URI"),
            Some("e.g. \"qemu:///system\" or \"test:///default\""),
        ));
    }
    let libvirt_call_timeout_ms = raw
        .libvirt
        .call_timeout_ms
        .unwrap_or(DEFAULT_LIBVIRT_CALL_TIMEOUT_MS);
    if !(500..=600_000).contains(&libvirt_call_timeout_ms) {
        return Err(check.error(
            "libvirt.call_timeout_ms",
            format!("{libvirt_call_timeout_ms} is out of range"),
            Some("500..=600000"),
        ));
    }
    let failover = Failover {
        host_failures_to_tolerate: raw
            .failover
            .host_failures_to_tolerate
            .unwrap_or(DEFAULT_HOST_FAILURES_TO_TOLERATE),
        restart_grace_ms: raw
            .failover
            .restart_grace_ms
            .unwrap_or(DEFAULT_RESTART_GRACE_MS),
        restart_attempts: raw
            .failover
            .restart_attempts
            .unwrap_or(DEFAULT_RESTART_ATTEMPTS),
    };
    if failover.host_failures_to_tolerate > 254 {
        return Err(check.error(
            "failover.host_failures_to_tolerate",
            format!(
                "{} is more hosts than a lockspace has",
                failover.host_failures_to_tolerate
            ),
            Some("0..=254"),
        ));
    }
    if !(1_000..=600_000).contains(&failover.restart_grace_ms) {
        return Err(check.error(
            "failover.restart_grace_ms",
            format!("{} is out of range", failover.restart_grace_ms),
            Some("1000..=600000"),
        ));
    }
    if !(1..=100).contains(&failover.restart_attempts) {
        return Err(check.error(
            "failover.restart_attempts",
            format!("{} is out of range", failover.restart_attempts),
            Some("1..=100"),
        ));
    }
    let run_dir = check.absolute(
        "paths.run_dir",
        raw.paths.run_dir.as_deref().unwrap_or(DEFAULT_RUN_DIR),
    )?;
    let state_dir = check.absolute(
        "paths.state_dir",
        raw.paths.state_dir.as_deref().unwrap_or(DEFAULT_STATE_DIR),
    )?;
    let event_log = check.absolute(
        "paths.event_log",
        raw.paths.event_log.as_deref().unwrap_or(DEFAULT_EVENT_LOG),
    )?;
    for (key, value) in [
        ("capacity.memory_mib", raw.capacity.memory_mib),
        ("capacity.vcpus", raw.capacity.vcpus),
    ] {
        if value == Some(0) {
            return Err(check.error(key, "0 leaves no room for any VM", Some("at least 1")));
        }
    }
    let storage_incident_share = raw
        .monitor
        .storage_incident_share
        .unwrap_or(DEFAULT_STORAGE_INCIDENT_SHARE);
    if !(storage_incident_share > 0.0 && storage_incident_share <= 1.0) {
        return Err(check.error(
            "monitor.storage_incident_share",
            format!("{storage_incident_share} is out of range"),
            Some("a share above 0 and at most 1, e.g. 0.5"),
        ));
    }

    let fence_check_interval_ms = raw
        .monitor
        .fence_check_interval_ms
        .unwrap_or(DEFAULT_FENCE_CHECK_INTERVAL_MS);
    if fence_check_interval_ms != 0 && !(1_000..=86_400_000).contains(&fence_check_interval_ms) {
        return Err(check.error(
            "monitor.fence_check_interval_ms",
            format!("{fence_check_interval_ms} is out of range"),
            Some("0 (never), or 1000..=86400000 milliseconds"),
        ));
    }

    let metrics_listen = metrics_from_file(&check, &raw.metrics)?;
    let hooks = hooks_from_file(&check, raw.hooks)?;

    let mut cluster = Vec::new();
    let mut ids = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (index, host) in raw.cluster.hosts.into_iter().enumerate() {
        let at = |field: &str| format!("cluster.hosts[{index}].{field}");
        if !(1..=lease::format::HOSTS_MAX).contains(&host.id) {
            return Err(check.error(
                &at("id"),
                format!("{} is out of range", host.id),
                Some(&format!("1..={}", lease::format::HOSTS_MAX)),
            ));
        }
        check.name(&at("name"), &host.name, lease::format::HOST_NAME_BYTES)?;
        if !ids.insert(host.id) {
            return Err(check.error(
                &at("id"),
                format!("host id {} is listed twice", host.id),
                Some("each id once"),
            ));
        }
        if !names.insert(host.name.clone()) {
            return Err(check.error(
                &at("name"),
                format!("host name {:?} is listed twice", host.name),
                Some("each name once"),
            ));
        }
        let fence = fence_from_file(&check, &at, host.fence)?;
        cluster.push(ClusterHost {
            id: host.id,
            name: host.name,
            fence,
        });
    }
    if let Some(own) = cluster.iter().find(|h| h.id == host_id) {
        if own.name != raw.host.name {
            return Err(check.error(
                "host.name",
                format!(
                    "{:?} differs from the cluster entry for id {host_id} ({:?})",
                    raw.host.name, own.name
                ),
                Some("the same name in [host] and [[cluster.hosts]]"),
            ));
        }
        if own.fence == Fence::None && watchdog_device.is_none() {
            return Err(check.error(
                "watchdog.device",
                "this host has fence method \"none\" and no watchdog: nothing could stop it if it hung, so its leases could never be taken over",
                Some("a watchdog device, or a fence method for this host"),
            ));
        }
    }

    let secrets_path = raw
        .paths
        .secrets
        .map(|s| check.absolute("paths.secrets", &s))
        .transpose()?;
    let needs_password: Vec<&ClusterHost> = cluster
        .iter()
        .filter(|h| matches!(h.fence, Fence::Ipmi { .. }))
        .collect();
    let passwords = match secrets_path {
        Some(path) => load_secrets(&path)?,
        None if !needs_password.is_empty() => {
            return Err(check.error(
                "paths.secrets",
                format!(
                    "host {:?} is fenced by ipmi but no secrets file is configured",
                    needs_password
                        .first()
                        .map(|h| h.name.as_str())
                        .unwrap_or("")
                ),
                Some("the path of a mode 0600 TOML file with [hosts.NAME] password = \"...\""),
            ))
        }
        None => BTreeMap::new(),
    };
    for host in &needs_password {
        if !passwords.contains_key(&host.name) {
            return Err(check.error(
                "paths.secrets",
                format!("no password for host {:?} in the secrets file", host.name),
                Some(&format!("[hosts.{}] password = \"...\"", host.name)),
            ));
        }
    }

    Ok(Config {
        file: path.to_path_buf(),
        host_id,
        host_name: raw.host.name,
        lockspace: raw.lockspace.name,
        device: device.display().to_string(),
        io_timeout_ms,
        io_engine,
        sector_size_bytes: raw.lockspace.sector_size_bytes,
        socket,
        socket_group,
        watchdog_device,
        libvirt_uri,
        libvirt_call_timeout_ms,
        run_dir,
        state_dir,
        event_log,
        memory_mib: raw.capacity.memory_mib,
        vcpus: raw.capacity.vcpus,
        storage_incident_share,
        fence_check_interval_ms,
        failover,
        cluster,
        passwords,
        metrics_listen,
        hooks,
    })
}

fn metrics_from_file(
    check: &Checker<'_>,
    metrics: &FileMetrics,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let listen = match (&metrics.listen, metrics.enabled) {
        (_, Some(false)) | (None, None) => return Ok(None),
        (Some(listen), _) => listen.as_str(),
        (None, Some(true)) => DEFAULT_METRICS_LISTEN,
    };
    listen.parse().map(Some).map_err(|_| {
        check.error(
            "metrics.listen",
            format!("{listen:?} is not an address and port"),
            Some("IP:PORT, e.g. 127.0.0.1:9720 (loopback) or [::]:9720"),
        )
    })
}

fn hooks_from_file(
    check: &Checker<'_>,
    hooks: FileHooks,
) -> Result<crate::hooks::HooksConfig, ConfigError> {
    use crate::hooks::{
        HOOK_EVENTS, HOOK_TIMEOUT_MS_DEFAULT, HOOK_TIMEOUT_MS_MAX, HOOK_TIMEOUT_MS_MIN,
    };
    let timeout_ms = hooks.timeout_ms.unwrap_or(HOOK_TIMEOUT_MS_DEFAULT);
    if !(HOOK_TIMEOUT_MS_MIN..=HOOK_TIMEOUT_MS_MAX).contains(&timeout_ms) {
        return Err(check.error(
            "hooks.timeout_ms",
            format!("{timeout_ms} is out of range"),
            Some(&format!(
                "{HOOK_TIMEOUT_MS_MIN}..={HOOK_TIMEOUT_MS_MAX} milliseconds"
            )),
        ));
    }
    let mut result = Vec::new();
    for (index, hook) in hooks.run.into_iter().enumerate() {
        let at = |field: &str| format!("hooks.run[{index}].{field}");
        if !Path::new(&hook.program).is_absolute() {
            return Err(check.error(
                &at("program"),
                format!("{:?} is not an absolute path", hook.program),
                Some("the program's absolute path"),
            ));
        }
        if hook.events.is_empty() {
            return Err(check.error(
                &at("events"),
                "names no event",
                Some(&HOOK_EVENTS.join(", ")),
            ));
        }
        for kind in &hook.events {
            if !HOOK_EVENTS.contains(&kind.as_str()) {
                return Err(check.error(
                    &at("events"),
                    format!("{kind:?} is not an event kind a hook can run on"),
                    Some(&HOOK_EVENTS.join(", ")),
                ));
            }
        }
        result.push(crate::hooks::Hook {
            events: hook.events,
            program: hook.program,
            args: hook.args,
        });
    }
    Ok(crate::hooks::HooksConfig {
        timeout_ms,
        hooks: result,
    })
}

fn fence_from_file(
    check: &Checker<'_>,
    at: &dyn Fn(&str) -> String,
    fence: FileFence,
) -> Result<Fence, ConfigError> {
    let unexpected = |field: &str, present: bool, method: &str| {
        if present {
            Err(check.error(
                &at(&format!("fence.{field}")),
                format!("not used by fence method {method:?}"),
                None,
            ))
        } else {
            Ok(())
        }
    };
    match fence.method.as_str() {
        "ipmi" => {
            let address = fence.address.ok_or_else(|| {
                check.error(
                    &at("fence.address"),
                    "missing",
                    Some("the BMC's IP address or host name"),
                )
            })?;
            let user = fence.user.ok_or_else(|| {
                check.error(&at("fence.user"), "missing", Some("the BMC user name"))
            })?;
            let cipher = fence.cipher.unwrap_or(3);
            if cipher != 3 {
                return Err(check.error(
                    &at("fence.cipher"),
                    format!("cipher suite {cipher} is not supported"),
                    Some("3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128)"),
                ));
            }
            let privilege = fence
                .privilege
                .unwrap_or_else(|| "administrator".to_string());
            if privilege != "administrator" && privilege != "operator" {
                return Err(check.error(
                    &at("fence.privilege"),
                    format!("{privilege:?} cannot power a host off"),
                    Some("\"administrator\" or \"operator\""),
                ));
            }
            unexpected("agent", fence.agent.is_some(), "ipmi")?;
            unexpected("options", !fence.options.is_empty(), "ipmi")?;
            Ok(Fence::Ipmi {
                address,
                port: fence.port.unwrap_or(623),
                user,
                cipher,
                privilege,
            })
        }
        "agent" => {
            let agent = fence.agent.ok_or_else(|| {
                check.error(
                    &at("fence.agent"),
                    "missing",
                    Some("a fence agent, e.g. \"fence_ipmilan\""),
                )
            })?;
            if agent.contains('/') && !agent.starts_with('/') {
                return Err(check.error(
                    &at("fence.agent"),
                    format!("{agent:?} is a relative path"),
                    Some("an agent name found in PATH, or an absolute path"),
                ));
            }
            if fence.options.contains_key("action") || fence.options.contains_key("password") {
                return Err(check.error(
                    &at("fence.options"),
                    "\"action\" and \"password\" are set by leasehold",
                    Some("agent options other than action and password (passwords go in the secrets file)"),
                ));
            }
            for (field, present) in [
                ("address", fence.address.is_some()),
                ("port", fence.port.is_some()),
                ("user", fence.user.is_some()),
                ("cipher", fence.cipher.is_some()),
                ("privilege", fence.privilege.is_some()),
            ] {
                unexpected(field, present, "agent")?;
            }
            Ok(Fence::Agent {
                agent,
                options: fence.options,
            })
        }
        "none" => Ok(Fence::None),
        other => Err(check.error(
            &at("fence.method"),
            format!("unknown fence method {other:?}"),
            Some("\"ipmi\", \"agent\" or \"none\""),
        )),
    }
}

/// Read the secrets file: it must be a regular file of mode 0600 (no access
/// for group or others), since it holds BMC passwords.
fn load_secrets(path: &Path) -> Result<BTreeMap<String, Secret>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let file = path.display().to_string();
    let check = Checker { file: &file };
    let metadata = std::fs::metadata(path)
        .map_err(|e| check.error("-", format!("cannot read the secrets file: {e}"), None))?;
    let mode = metadata.permissions().mode() & 0o7777;
    if !metadata.is_file() || mode & 0o077 != 0 {
        return Err(check.error(
            "-",
            format!("the secrets file has mode {mode:04o}; it holds passwords"),
            Some("a regular file of mode 0600: chmod 0600 FILE"),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| check.error("-", format!("cannot read the secrets file: {e}"), None))?;
    let raw: FileSecrets = toml::from_str(&text).map_err(|e| {
        // The message of a parse error may quote the line: keep it out.
        let line = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|s| s.lines().count().max(1))
            .unwrap_or(0);
        check.error(
            &format!("line {line}"),
            "not valid secrets TOML",
            Some("[hosts.NAME] password = \"...\""),
        )
    })?;
    Ok(raw
        .hosts
        .into_iter()
        .map(|(name, secret)| (name, Secret(secret.password)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[host]
id = 2
name = "hostB"

[lockspace]
name = "cluster1"
device = "/dev/loop0"
"#;

    fn parse_text(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/leasehold/leasehold.toml"), text)
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config = parse_text(MINIMAL).expect("valid");
        assert_eq!(config.host_id, 2);
        assert_eq!(config.io_timeout_ms, IO_TIMEOUT_MS_DEFAULT);
        assert_eq!(config.io_engine, IoEngine::Uring);
        assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(config.libvirt_uri, DEFAULT_LIBVIRT_URI);
        assert!(config.watchdog_device.is_none());
    }

    #[test]
    fn out_of_range_io_timeout_names_key_and_range() {
        let text = MINIMAL.replace(
            "device = \"/dev/loop0\"",
            "device = \"/dev/loop0\"\nio_timeout_ms = 50",
        );
        let error = parse_text(&text).expect_err("invalid");
        assert_eq!(error.key, "lockspace.io_timeout_ms");
        let message = error.to_string();
        assert!(
            message.contains("/etc/leasehold/leasehold.toml"),
            "{message}"
        );
        assert!(message.contains("100..=300000"), "{message}");
    }

    #[test]
    fn metrics_are_off_by_default_and_on_loopback_unless_configured() {
        assert_eq!(parse_text(MINIMAL).expect("valid").metrics_listen, None);
        let on = parse_text(&format!("{MINIMAL}\n[metrics]\nenabled = true\n")).expect("valid");
        assert_eq!(
            on.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_METRICS_LISTEN)
        );
        let everywhere =
            parse_text(&format!("{MINIMAL}\n[metrics]\nlisten = \"[::]:9100\"\n")).expect("valid");
        assert_eq!(everywhere.metrics_listen.map(|a| a.port()), Some(9100));
        let off = parse_text(&format!(
            "{MINIMAL}\n[metrics]\nenabled = false\nlisten = \"0.0.0.0:1\"\n"
        ))
        .expect("valid");
        assert_eq!(off.metrics_listen, None);
        let error = parse_text(&format!("{MINIMAL}\n[metrics]\nlisten = \"9720\"\n"))
            .expect_err("a port alone is not an address");
        assert_eq!(error.key, "metrics.listen");
    }

    #[test]
    fn hooks_name_known_events_and_absolute_programs() {
        let hook = |events: &str, program: &str| {
            format!(
                "{MINIMAL}\n[hooks]\ntimeout_ms = 2000\n[[hooks.run]]\nevents = {events}\nprogram = \"{program}\"\nargs = [\"--page\"]\n"
            )
        };
        let config =
            parse_text(&hook("[\"fenced\", \"vm-failed\"]", "/usr/local/bin/page")).expect("valid");
        assert_eq!(config.hooks.timeout_ms, 2000);
        assert_eq!(config.hooks.hooks.len(), 1);
        assert_eq!(config.hooks.hooks[0].args, ["--page"]);
        let typo = parse_text(&hook("[\"fencd\"]", "/usr/local/bin/page")).expect_err("typo");
        assert_eq!(typo.key, "hooks.run[0].events");
        assert!(
            typo.to_string().contains("fenced"),
            "names the kinds: {typo}"
        );
        let none = parse_text(&hook("[]", "/usr/local/bin/page")).expect_err("no event");
        assert_eq!(none.key, "hooks.run[0].events");
        let relative = parse_text(&hook("[\"fenced\"]", "page")).expect_err("relative");
        assert_eq!(relative.key, "hooks.run[0].program");
        assert!(parse_text(MINIMAL).expect("valid").hooks.hooks.is_empty());
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = format!("{MINIMAL}\n[control]\nsockett = \"/x\"\n");
        let error = parse_text(&text).expect_err("invalid");
        assert!(error.problem.contains("sockett"), "{error}");
        assert!(error.key.starts_with("line "), "{error}");
    }

    #[test]
    fn relative_device_is_refused() {
        let text = MINIMAL.replace("/dev/loop0", "loop0");
        let error = parse_text(&text).expect_err("invalid");
        assert_eq!(error.key, "lockspace.device");
    }

    #[test]
    fn own_host_without_fence_needs_a_watchdog() {
        let text = format!(
            "{MINIMAL}\n[[cluster.hosts]]\nid = 2\nname = \"hostB\"\nfence = {{ method = \"none\" }}\n"
        );
        let error = parse_text(&text).expect_err("invalid");
        assert_eq!(error.key, "watchdog.device");
        let ok = format!("{text}\n[watchdog]\ndevice = \"/dev/watchdog\"\n");
        parse_text(&ok).expect("valid with a watchdog");
    }

    #[test]
    fn ipmi_fence_needs_a_secrets_file() {
        let text = format!(
            "{MINIMAL}\n[[cluster.hosts]]\nid = 1\nname = \"hostA\"\nfence = {{ method = \"ipmi\", address = \"127.0.0.1\", user = \"admin\" }}\n"
        );
        let error = parse_text(&text).expect_err("invalid");
        assert_eq!(error.key, "paths.secrets");
    }

    #[test]
    fn duplicate_cluster_ids_are_refused() {
        let text = format!(
            "{MINIMAL}\n[[cluster.hosts]]\nid = 1\nname = \"a\"\nfence = {{ method = \"none\" }}\n[[cluster.hosts]]\nid = 1\nname = \"b\"\nfence = {{ method = \"none\" }}\n"
        );
        let error = parse_text(&text).expect_err("invalid");
        assert_eq!(error.key, "cluster.hosts[1].id");
    }

    #[test]
    fn secrets_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("leasehold-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secrets = dir.join("secrets.toml");
        std::fs::write(&secrets, "[hosts.hostA]\npassword = \"hunter2\"\n").expect("write");
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = format!(
            "{MINIMAL}\n[paths]\nsecrets = \"{}\"\n[[cluster.hosts]]\nid = 1\nname = \"hostA\"\nfence = {{ method = \"ipmi\", address = \"127.0.0.1\", user = \"admin\" }}\n",
            secrets.display()
        );
        let error = parse_text(&text).expect_err("world-readable secrets");
        assert!(error.problem.contains("0644"), "{error}");
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = parse_text(&text).expect("valid");
        assert_eq!(
            config.passwords.get("hostA").map(Secret::expose),
            Some("hunter2")
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
