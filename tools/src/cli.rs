//! Every command and flag, defined once; clap derives help from these docs.

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  failure: I/O error, invalid argument, device not usable as asked
  2  usage error (bad flags)
  3  busy: the lease is held by another host that is not known to be dead,
     or the host id is in use by another live host
  4  the device has an unusable sector (bad checksum, foreign lockspace,
     newer format, unreadable) where the operation needed it; never
     treated as free: inspect with `leasehold dump`
  5  lost: our delta lease or resource lease is no longer ours (fenced,
     taken over, renewal deadline passed, another joiner won)";

#[derive(Parser, Debug)]
#[command(name = "leasehold", version, about = "Format, inspect and operate leasehold lease devices", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a new lockspace to a file or block device.
    Format(FormatArgs),
    /// Show the header, used host sectors and used leases of a device.
    Dump(DumpArgs),
    /// One-shot lease operations straight on the device (for tests and scripts).
    #[command(subcommand)]
    Direct(DirectCommand),
    /// This host's daemon: its lockspaces, every host it sees, held leases.
    Status(DaemonArgs),
    /// Every host of a lockspace as this host's daemon sees it.
    Hosts(HostsArgs),
    /// The newest events of this host's daemon (joins, silent hosts,
    /// storage incidents, self-fencing, ...).
    Events(EventsArgs),
    /// Lease operations through this host's daemon, for a process.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Operate a cluster host's fence device through this host's daemon.
    Fence(FenceArgs),
    /// HA VMs: register, list, start, stop, move and remove them through
    /// this host's daemon (the registry lives on the lease device).
    #[command(subcommand)]
    Vm(VmCommand),
    /// Run a local 3-host cluster (one leaseholdd and one simulated BMC
    /// per host, one file-backed lease device, libvirt's test driver),
    /// power a host off through its BMC and show the failover.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo keeps its lease device, configurations and logs
    /// (wiped first).
    #[arg(long, default_value = "/var/tmp/leasehold-demo")]
    pub dir: String,
    /// io_timeout of the demo lockspace in seconds; a silent host is
    /// declared after 8 io_timeouts.
    #[arg(long, default_value_t = 1.0)]
    pub io_timeout: f64,
    /// Keep the directory (logs, event logs, lease device) afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Register a HA VM from its libvirt domain XML (with a fixed <uuid>)
    /// and start it here or on --host; admission control may refuse.
    Add(VmAddArgs),
    /// Every HA VM: state, priority, size, where it runs; and the headroom.
    List(DaemonArgs),
    /// Want a stopped or failed VM running again, here or on --host.
    Start(VmStartArgs),
    /// Stop a VM that runs on this host; it stays stopped.
    Stop(VmNameArgs),
    /// Cold migration of a VM running on this host: stop it here, HOST
    /// starts it.
    Migrate(VmMigrateArgs),
    /// Forget a stopped VM: its record and lease slot are freed.
    Remove(VmNameArgs),
    /// Print every HA VM's record as one checksummed JSON document (a
    /// backup of the registry: `leasehold vm export > registry.json`).
    Export(DaemonArgs),
    /// Register the VMs of an export again (after a mistaken format, or on
    /// a new device); VMs already registered are skipped.
    Import(VmImportArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorityArg {
    High,
    Medium,
    Low,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartArg {
    /// Restart it on another host when its host dies.
    Always,
    /// Leave it stopped when its host dies.
    Never,
}

#[derive(Args, Debug)]
pub struct VmAddArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The libvirt domain XML file.
    pub xml: String,
    /// Restart order after a host failure: high first.
    #[arg(long, value_enum, default_value = "medium")]
    pub priority: PriorityArg,
    #[arg(long, value_enum, default_value = "always")]
    pub restart: RestartArg,
    /// The host to start it on (name or id); default: this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Add it even when admission control says the cluster could not
    /// restart every HA VM after host_failures_to_tolerate host losses.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct VmStartArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// VM name or UUID.
    pub vm: String,
    /// The host to start it on (name or id); default: this host.
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Args, Debug)]
pub struct VmImportArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The file `leasehold vm export` wrote.
    pub file: String,
}

#[derive(Args, Debug)]
pub struct VmNameArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// VM name or UUID.
    pub vm: String,
}

#[derive(Args, Debug)]
pub struct VmMigrateArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// VM name or UUID.
    pub vm: String,
    /// The host to move it to (name or id).
    pub host: String,
}

#[derive(Args, Debug)]
pub struct FenceArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// status | off (power off, confirm, mark FENCED) | on | confirm (you
    /// powered it off by hand: mark FENCED without touching a device).
    #[arg(value_enum)]
    pub action: FenceActionArg,
    /// The host: its name or id from the cluster section.
    pub host: String,
    /// Do not ask before `off` or `confirm` (for scripts; without a
    /// terminal they are refused unless given).
    #[arg(long)]
    pub yes: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceActionArg {
    Status,
    Off,
    On,
    Confirm,
}

/// How to reach the daemon.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Control socket of leaseholdd. Default: from --config, else
    /// $LEASEHOLD_SOCKET, else /run/leasehold/leaseholdd.sock.
    #[arg(long)]
    pub socket: Option<String>,
    /// Take the socket path from this daemon configuration file.
    #[arg(long)]
    pub config: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct HostsArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Lockspace (default: the configured one).
    #[arg(long)]
    pub lockspace: Option<String>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// How many of the newest events.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub count: usize,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Register a process as a lease holder: its leases are released when
    /// it exits, and it is killed if this host loses its lockspace.
    Register(PidArgs),
    /// Forget a registered process and release its leases.
    Unregister(PidArgs),
    /// Acquire a resource lease for a registered process.
    Acquire(ClientResourceArgs),
    /// Release a resource lease held for a process.
    Release(ClientResourceArgs),
    /// Who holds a resource lease, read from the device now.
    Inquire(InquireArgs),
    /// Acquire RESOURCE for this very process, then run COMMAND in its
    /// place (exec): the lease lives exactly as long as the command.
    Run(RunArgs),
    /// Join another lockspace on another device.
    AddLockspace(AddLockspaceArgs),
    /// Leave a lockspace added with add-lockspace.
    RemoveLockspace(RemoveLockspaceArgs),
}

#[derive(Args, Debug)]
pub struct PidArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The process id.
    #[arg(long)]
    pub pid: i32,
}

#[derive(Args, Debug)]
pub struct ClientResourceArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Resource name (1..=48 bytes).
    pub resource: String,
    /// The registered process the lease is (to be) held for.
    #[arg(long)]
    pub pid: i32,
    /// Lockspace (default: the configured one).
    #[arg(long)]
    pub lockspace: Option<String>,
}

#[derive(Args, Debug)]
pub struct InquireArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    pub resource: String,
    #[arg(long)]
    pub lockspace: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Resource to hold while the command runs (repeatable).
    #[arg(long = "resource", required = true)]
    pub resources: Vec<String>,
    #[arg(long)]
    pub lockspace: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AddLockspaceArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    pub name: String,
    pub device: String,
    /// io_timeout for this lockspace in milliseconds (default: the daemon's).
    #[arg(long)]
    pub io_timeout_ms: Option<u32>,
}

#[derive(Args, Debug)]
pub struct RemoveLockspaceArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    pub name: String,
}

/// How to open the device.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Lease device: a block device or a regular file.
    pub path: String,
    /// Sector size in bytes (512 or 4096). Block devices: must match the
    /// device's logical sector size (the default). Files: taken from the
    /// header if omitted.
    #[arg(long, value_parser = parse_sector_size)]
    pub sector_size: Option<u32>,
    /// I/O engine: pread/pwrite, or io_uring with a deadline per I/O.
    #[arg(long, value_enum, default_value_t = IoEngine::Pread)]
    pub io_engine: IoEngine,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEngine {
    Pread,
    Uring,
}

#[derive(Args, Debug)]
pub struct FormatArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Lockspace name (1..=48 bytes).
    #[arg(long)]
    pub lockspace: String,
    /// Host ids 1..=N (at most 2000). The fence area grows with N squared.
    #[arg(long, default_value_t = 64)]
    pub max_hosts: u32,
    /// Resource slots.
    #[arg(long, default_value_t = 128)]
    pub max_resources: u32,
    /// Payload bytes per resource slot (a multiple of the sector size).
    #[arg(long, default_value_t = lease::format::PAYLOAD_SIZE_BYTES_DEFAULT)]
    pub payload_size: u32,
    /// Default io_timeout of the lockspace, in seconds (0.1 to 300).
    #[arg(long, default_value = "1", value_parser = parse_seconds_ms)]
    pub io_timeout: u32,
    /// Overwrite what the device holds: a lockspace nobody renews, a
    /// filesystem, a partition table, LVM, RAID, ...
    #[arg(long)]
    pub force: bool,
    /// With --force: overwrite even a lockspace whose hosts are renewing
    /// (every one of them self-fences and the VM registry is lost).
    #[arg(long, requires = "force")]
    pub force_live: bool,
    /// Create the regular file PATH of SIZE bytes (K, M, G, T suffixes)
    /// when it does not exist; without it a missing path is refused.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    pub create: Option<u64>,
}

/// "16M", "1G", "4096": bytes, with binary K/M/G/T suffixes.
fn parse_size_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        Some((i, 'T' | 't')) => (&text[..i], 40),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 16M, 1G, 1048576)"))?;
    value
        .checked_mul(1u64 << shift)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("{text:?} is not a usable size"))
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// One JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also list unused host sectors and free slots.
    #[arg(long)]
    pub all: bool,
    /// Read the host area twice, a renewal interval plus an io_timeout
    /// apart (3 x the largest io_timeout of the hosts), to tell live hosts
    /// (their record moved) from silent ones (it stood still).
    #[arg(long)]
    pub settle: bool,
}

#[derive(Subcommand, Debug)]
pub enum DirectCommand {
    /// Acquire the delta lease of a host id (join the lockspace).
    Join(HostArgs),
    /// Renew a joined host's delta lease once.
    Renew(HostArgs),
    /// Release a host's delta lease (leave the lockspace).
    Leave(HostArgs),
    /// Acquire a resource lease by name for a joined host.
    Acquire(ResourceArgs),
    /// Release a resource lease held by a host.
    Release(ResourceArgs),
}

#[derive(Args, Debug)]
pub struct HostArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// This host's id (1..=max_hosts).
    #[arg(long)]
    pub host_id: u32,
    /// This host's name (unique per machine, 1..=64 bytes).
    #[arg(long)]
    pub host_name: String,
    /// io_timeout in seconds for join (default: the lockspace's).
    #[arg(long, value_parser = parse_seconds_ms)]
    pub io_timeout: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ResourceArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The acting host's id; its current generation is read from the device.
    #[arg(long)]
    pub host_id: u32,
    /// Resource name (1..=48 bytes). Acquire claims a free slot for a new name.
    #[arg(long)]
    pub resource: String,
}

fn parse_sector_size(value: &str) -> Result<u32, String> {
    match value {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!(
            "{value} is not a supported sector size (512 or 4096)"
        )),
    }
}

/// Seconds (decimals allowed) to milliseconds, within the io_timeout range.
fn parse_seconds_ms(value: &str) -> Result<u32, String> {
    let seconds: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("{value} must be a positive number of seconds"));
    }
    let ms = (seconds * 1000.0).round();
    if ms > f64::from(u32::MAX) {
        return Err(format!("{value} seconds is too long"));
    }
    let ms = ms as u32;
    lease::timeouts::Timeouts::validate_io_timeout_ms(ms)?;
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn io_timeout_parses_seconds() {
        assert_eq!(parse_seconds_ms("10"), Ok(10_000));
        assert_eq!(parse_seconds_ms("0.5"), Ok(500));
        assert!(parse_seconds_ms("0").is_err());
        assert!(parse_seconds_ms("0.01").is_err());
        assert!(parse_seconds_ms("1000").is_err());
        assert!(parse_seconds_ms("x").is_err());
    }

    #[test]
    fn sector_size_is_512_or_4096() {
        assert_eq!(parse_sector_size("4096"), Ok(4096));
        assert!(parse_sector_size("1024").is_err());
    }
}
