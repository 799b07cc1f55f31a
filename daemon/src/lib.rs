//! leaseholdd, the per-host daemon, as a library: the binary in main.rs is
//! a thin edge over [`daemon::run`].
//!
//! Modules, bottom up:
//! - [`args`]: leaseholdd's command line; [`config`]: the TOML file and
//!   its validation.
//! - [`protocol`], [`client`]: the control socket's JSON lines, both ends.
//! - [`events`]: the append-only event log.
//! - [`watchdog`]: /dev/watchdog or the test emulation's FIFO.
//! - [`capacity`]: free memory and vCPUs advertised in the host record.
//! - [`holders`]: registered lease-holding processes (pidfd).
//! - [`monitor`]: per-host states with the storage-confirmed and
//!   storage-incident rules; [`agreement`]: the settings every host must
//!   share, compared on each scan.
//! - [`space`]: one joined lockspace: renewal thread, resource worker.
//! - [`statefile`]: what a restarted daemon takes over.
//! - [`server`]: the control socket.
//! - [`daemon`]: start, watchdog petting, self-fencing, shutdown.
//! - [`fence`], [`fencing`]: fence devices (IPMI, agents) and the fencing
//!   thread that elects one fencer per silent host.
//! - [`placement`], [`registry`]: restart placement and admission control;
//!   the VM records stored in resource payloads (failover, in progress).
//! - [`backup`]: the registry export and import document.
//! - [`preflight`]: `--check-config`'s checks beyond the file's validity.
//! - [`markup`]: XML and HTML escaping.
//! - [`domain_lease`]: a HA VM's domain XML with its `<lease>`, as the VM
//!   manager starts it (the lock plugin then asks this daemon for it).
//! - [`child`]: running a helper program within a time limit (fence
//!   agents, hooks); [`hooks`]: the alert hooks run on chosen events.
//! - [`metrics`]: latency histograms; [`timeline`]: the last failover as
//!   this host saw it; [`web`]: the metrics and status page listener.

pub mod agreement;
pub mod args;
pub mod backup;
pub mod capacity;
pub mod child;
pub mod client;
pub mod config;
pub mod context;
pub mod daemon;
pub mod domain_lease;
pub mod events;
pub mod failover;
pub mod fence;
pub mod fence_health;
pub mod fencing;
pub mod holders;
pub mod hooks;
#[cfg(feature = "libvirt")]
pub mod hypervisor;
pub mod markup;
pub mod metrics;
pub mod monitor;
pub mod placement;
pub mod preflight;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod space;
pub mod statefile;
pub mod timeline;
#[cfg(feature = "libvirt")]
pub mod vms;
pub mod watchdog;
pub mod web;
