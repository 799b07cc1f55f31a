//! The local hypervisor through libvirt (the `virt` crate): define and
//! start a VM from its stored domain XML, tell whether it runs, destroy it.
//! `test:///default` (in-process, no QEMU) for demos and tests,
//! `qemu:///system` in production. A [`Hypervisor`] call blocks for as long
//! as libvirt takes; the daemon never calls it directly from a thread that
//! decides anything, but through a [`Libvirt`] executor: each call runs on
//! a worker thread and the caller waits at most `libvirt.call_timeout_ms`.
//! A call that did not answer in time is [`CallError::TimedOut`]: its
//! outcome is unknown (it may still complete), and the caller decides what
//! that means (daemon/src/vms.rs: a start of unknown outcome keeps its
//! lease until libvirt says whether the VM runs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

#[derive(Clone, Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("libvirt {uri}: cannot connect: {message} (is libvirtd running? is the URI right?)")]
    Connect { uri: String, message: String },
    #[error("libvirt {uri}: {action} {domain}: {message}")]
    Domain {
        uri: String,
        domain: String,
        action: &'static str,
        message: String,
        /// The connection failed during the call (the reply was lost): the
        /// call may have been carried out all the same.
        transport: bool,
    },
}

impl HypervisorError {
    /// Did the error come from the connection rather than from libvirt's
    /// answer? Then what the call did is unknown.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            HypervisorError::Domain {
                transport: true,
                ..
            }
        )
    }
}

/// Was `e` raised by the client's connection (lost reply, closed socket)
/// rather than by the hypervisor's answer?
fn is_transport(e: &virt::error::Error) -> bool {
    matches!(
        e.domain(),
        virt::error::ErrorDomain::Rpc | virt::error::ErrorDomain::Remote
    ) || matches!(e.code(), ErrorNumber::NoConnect | ErrorNumber::SystemError)
}

/// One connection to the local hypervisor.
pub struct Hypervisor {
    uri: String,
    conn: Connect,
}

impl Hypervisor {
    pub fn open(uri: &str) -> Result<Hypervisor, HypervisorError> {
        // libvirt prints every error to stderr by default, even handled ones.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| HypervisorError::Connect {
            uri: uri.to_string(),
            message: e.message().to_string(),
        })?;
        Ok(Hypervisor {
            uri: uri.to_string(),
            conn,
        })
    }

    fn failed(
        &self,
        action: &'static str,
        domain: &str,
        e: &virt::error::Error,
    ) -> HypervisorError {
        HypervisorError::Domain {
            uri: self.uri.clone(),
            domain: domain.to_string(),
            action,
            message: e.message().to_string(),
            transport: is_transport(e),
        }
    }

    fn lookup(&self, uuid: &str) -> Result<Option<Domain>, HypervisorError> {
        match Domain::lookup_by_uuid_string(&self.conn, uuid) {
            Ok(domain) => Ok(Some(domain)),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(None),
            Err(e) => Err(self.failed("look up", uuid, &e)),
        }
    }

    /// Define (or redefine) the domain from `xml` and start it; a domain
    /// already running is left running.
    pub fn start(&self, uuid: &str, xml: &str) -> Result<(), HypervisorError> {
        if self.is_running(uuid)? {
            return Ok(());
        }
        let domain =
            Domain::define_xml(&self.conn, xml).map_err(|e| self.failed("define", uuid, &e))?;
        domain
            .create()
            .map_err(|e| self.failed("start", uuid, &e))?;
        Ok(())
    }

    pub fn is_running(&self, uuid: &str) -> Result<bool, HypervisorError> {
        match self.lookup(uuid)? {
            None => Ok(false),
            Some(domain) => match domain.is_active() {
                Ok(active) => Ok(active),
                Err(e) if e.code() == ErrorNumber::NoDomain => Ok(false),
                Err(e) => Err(self.failed("inspect", uuid, &e)),
            },
        }
    }

    /// Stop the domain at once (power cut); absent or stopped is fine.
    pub fn destroy(&self, uuid: &str) -> Result<(), HypervisorError> {
        let Some(domain) = self.lookup(uuid)? else {
            return Ok(());
        };
        if !self.is_running(uuid)? {
            return Ok(());
        }
        match domain.destroy() {
            Ok(()) => Ok(()),
            Err(e)
                if e.code() == ErrorNumber::NoDomain
                    || e.code() == ErrorNumber::OperationInvalid =>
            {
                Ok(())
            }
            Err(e) => Err(self.failed("destroy", uuid, &e)),
        }
    }

    /// Remove the domain's definition (after `destroy`); absent is fine.
    pub fn undefine(&self, uuid: &str) -> Result<(), HypervisorError> {
        let Some(domain) = self.lookup(uuid)? else {
            return Ok(());
        };
        match domain.undefine() {
            Ok(()) => Ok(()),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(()),
            Err(e) => Err(self.failed("undefine", uuid, &e)),
        }
    }

    /// The UUIDs of the running domains.
    pub fn running(&self) -> Result<Vec<String>, HypervisorError> {
        let domains = self
            .conn
            .list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            .map_err(|e| self.failed("list", "domains", &e))?;
        Ok(domains
            .iter()
            .filter_map(|d| d.get_uuid_string().ok())
            .collect())
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        let _ = self.conn.close();
    }
}

/// A libvirt call that did not give a result.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Failed(HypervisorError),
    /// No answer within the call timeout: the call may still complete.
    #[error("libvirt {uri} did not answer {action} within {timeout_ms} ms (libvirtd hung or overloaded?)")]
    TimedOut {
        uri: String,
        action: &'static str,
        timeout_ms: u64,
    },
    /// Earlier calls still hang; no new one is tried until one returns.
    #[error("libvirt {uri}: {hung} earlier call(s) still hang; {action} not tried")]
    Busy {
        uri: String,
        action: &'static str,
        hung: usize,
    },
}

impl CallError {
    /// Might the call have been carried out although no success came back?
    pub fn outcome_unknown(&self) -> bool {
        match self {
            CallError::Failed(e) => e.outcome_unknown(),
            CallError::TimedOut { .. } => true,
            CallError::Busy { .. } => false,
        }
    }

    pub fn is_connect(&self) -> bool {
        matches!(self, CallError::Failed(HypervisorError::Connect { .. }))
    }
}

/// The worker thread's side: a connection opened on first use and dropped
/// after any error (the next call opens a fresh one).
struct Session {
    uri: String,
    connection: Option<Hypervisor>,
}

type WorkerJob = Box<dyn FnOnce(&mut Session) + Send>;

/// A call in progress on a worker; its result arrives once.
pub struct Pending<T> {
    action: &'static str,
    receiver: std::sync::mpsc::Receiver<Result<T, HypervisorError>>,
    /// Set once the call returned (or its worker died).
    done: Arc<AtomicBool>,
}

impl<T> Pending<T> {
    /// The result if the call has returned, without waiting; a worker that
    /// died without answering counts as a failed call of unknown outcome.
    pub fn poll(&self, uri: &str) -> Option<Result<T, HypervisorError>> {
        match self.receiver.try_recv() {
            Ok(result) => Some(result),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Some(Err(worker_gone(uri, self.action)))
            }
        }
    }

    pub fn action(&self) -> &'static str {
        self.action
    }
}

fn worker_gone(uri: &str, action: &'static str) -> HypervisorError {
    HypervisorError::Domain {
        uri: uri.to_string(),
        domain: String::new(),
        action,
        message: "the libvirt worker thread ended without an answer".to_string(),
        transport: true,
    }
}

/// Runs libvirt calls on a worker thread with a bound on every wait. A
/// call that times out keeps its worker (it is abandoned, and ends when
/// the call returns); the next call gets a new worker and connection. At
/// most [`HUNG_WORKERS_MAX`] abandoned workers exist at a time: past that,
/// calls are refused at once ([`CallError::Busy`]) instead of piling up
/// threads behind a hung libvirtd.
pub struct Libvirt {
    uri: String,
    timeout_ms: u64,
    worker: Option<std::sync::mpsc::Sender<WorkerJob>>,
    /// The `done` flags of the calls abandoned on a timeout.
    hung: Vec<Arc<AtomicBool>>,
}

/// Abandoned workers kept at most (each is one thread stuck in libvirt).
pub const HUNG_WORKERS_MAX: usize = 2;

impl Libvirt {
    pub fn new(uri: &str, timeout_ms: u64) -> Libvirt {
        Libvirt {
            uri: uri.to_string(),
            timeout_ms,
            worker: None,
            hung: Vec::new(),
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// Abandoned calls that have not returned yet.
    pub fn hung_calls(&mut self) -> usize {
        self.hung.retain(|done| !done.load(Ordering::SeqCst));
        self.hung.len()
    }

    fn spawn_worker(&self) -> Option<std::sync::mpsc::Sender<WorkerJob>> {
        let (sender, receiver) = std::sync::mpsc::channel::<WorkerJob>();
        let mut session = Session {
            uri: self.uri.clone(),
            connection: None,
        };
        std::thread::Builder::new()
            .name("libvirt".to_string())
            .spawn(move || {
                while let Ok(job) = receiver.recv() {
                    job(&mut session);
                }
            })
            .ok()?;
        Some(sender)
    }

    /// Start `f` on the worker; wait for it with [`Libvirt::wait`] or keep
    /// the [`Pending`] and poll it later.
    pub fn submit<T: Send + 'static>(
        &mut self,
        action: &'static str,
        f: impl FnOnce(&Hypervisor) -> Result<T, HypervisorError> + Send + 'static,
    ) -> Result<Pending<T>, CallError> {
        let hung = self.hung_calls();
        if hung >= HUNG_WORKERS_MAX {
            return Err(CallError::Busy {
                uri: self.uri.clone(),
                action,
                hung,
            });
        }
        let (sender, receiver) = std::sync::mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let job: WorkerJob = Box::new(move |session: &mut Session| {
            let result = match session.connection.as_ref() {
                Some(h) => f(h),
                None => match Hypervisor::open(&session.uri) {
                    Ok(h) => f(session.connection.insert(h)),
                    Err(e) => Err(e),
                },
            };
            if result.is_err() {
                session.connection = None;
            }
            flag.store(true, Ordering::SeqCst);
            let _ = sender.send(result);
        });
        if self.worker.is_none() {
            self.worker = self.spawn_worker();
        }
        let sent = match self.worker.as_ref() {
            Some(worker) => worker.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        if let Err(job) = sent {
            // The worker is gone (it panicked): one more try on a new one.
            self.worker = self.spawn_worker();
            let retried = self.worker.as_ref().map(|w| w.send(job));
            if !matches!(retried, Some(Ok(()))) {
                self.worker = None;
                return Err(CallError::Failed(worker_gone(&self.uri, action)));
            }
        }
        Ok(Pending {
            action,
            receiver,
            done,
        })
    }

    /// Wait for `pending` at most the call timeout. On a timeout its
    /// worker is abandoned and the call stays pending (poll it later).
    pub fn wait<T>(&mut self, pending: &Pending<T>) -> Result<T, CallError> {
        let timeout = Duration::from_millis(self.timeout_ms);
        match pending.receiver.recv_timeout(timeout) {
            Ok(result) => result.map_err(CallError::Failed),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.worker = None;
                self.hung.push(Arc::clone(&pending.done));
                Err(CallError::TimedOut {
                    uri: self.uri.clone(),
                    action: pending.action,
                    timeout_ms: self.timeout_ms,
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                self.worker = None;
                Err(CallError::Failed(worker_gone(&self.uri, pending.action)))
            }
        }
    }

    /// Run `f` and wait for it (at most the call timeout).
    pub fn call<T: Send + 'static>(
        &mut self,
        action: &'static str,
        f: impl FnOnce(&Hypervisor) -> Result<T, HypervisorError> + Send + 'static,
    ) -> Result<T, CallError> {
        let pending = self.submit(action, f)?;
        self.wait(&pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(name: &str, uuid: &str) -> String {
        format!(
            "<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
        )
    }

    #[test]
    fn start_inspect_destroy_undefine_on_the_test_driver() {
        // Private instance: test:///default is shared by every connection
        // of this process.
        let dir = std::env::temp_dir().join(format!("leasehold-hv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let node = dir.join("node.xml");
        std::fs::write(&node, "<node/>").expect("node");
        let hv = Hypervisor::open(&format!("test://{}", node.display())).expect("open");
        let uuid = "6695eb01-f6a4-8304-79aa-97f2502e1931";
        assert!(!hv.is_running(uuid).expect("lookup"));
        hv.start(uuid, &xml("hvtest1", uuid)).expect("start");
        assert!(hv.is_running(uuid).expect("running"));
        assert!(hv.running().expect("list").contains(&uuid.to_string()));
        // Starting again is harmless.
        hv.start(uuid, &xml("hvtest1", uuid)).expect("start again");
        hv.destroy(uuid).expect("destroy");
        assert!(!hv.is_running(uuid).expect("stopped"));
        hv.destroy(uuid).expect("destroy again is harmless");
        hv.undefine(uuid).expect("undefine");
        hv.undefine(uuid).expect("undefine again is harmless");
        // Bad XML is a readable error naming the domain.
        let error = hv
            .start("6695eb01-f6a4-8304-79aa-97f2502e1932", "<domain>")
            .expect_err("bad xml");
        assert!(error.to_string().contains("define"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_call_past_its_timeout_is_abandoned_and_later_calls_are_bounded() {
        // Long enough for a connect on a loaded machine; the hung calls
        // sleep well past it.
        const TIMEOUT_MS: u64 = 1500;
        const HANG_MS: u64 = 4 * TIMEOUT_MS;
        let mut libvirt = Libvirt::new("test:///default", TIMEOUT_MS);
        assert!(libvirt.call("inspect", |h| h.running()).is_ok());
        // A call that hangs past the timeout: unknown outcome, and its
        // result still arrives later.
        let pending = libvirt
            .submit("start", |_| {
                std::thread::sleep(Duration::from_millis(HANG_MS));
                Ok(7)
            })
            .expect("submitted");
        let error = libvirt.wait(&pending).expect_err("timed out");
        assert!(matches!(error, CallError::TimedOut { .. }), "{error}");
        assert!(error.outcome_unknown());
        assert!(pending.poll(libvirt.uri()).is_none());
        // The next call runs on a fresh worker, not behind the hung one.
        assert!(libvirt.call("inspect", |h| h.running()).is_ok());
        let second = libvirt
            .submit("start", |_| {
                std::thread::sleep(Duration::from_millis(HANG_MS));
                Ok(8)
            })
            .expect("submitted");
        assert!(libvirt.wait(&second).is_err());
        // Two calls hang: the third is refused at once.
        let refused = libvirt.call("inspect", |h| h.running()).expect_err("busy");
        assert!(
            matches!(refused, CallError::Busy { hung: 2, .. }),
            "{refused}"
        );
        assert!(!refused.outcome_unknown());
        std::thread::sleep(Duration::from_millis(HANG_MS + 500));
        assert_eq!(pending.poll(libvirt.uri()).map(|r| r.ok()), Some(Some(7)));
        assert_eq!(libvirt.hung_calls(), 0);
        assert!(libvirt.call("inspect", |h| h.running()).is_ok());
    }

    #[test]
    fn an_unknown_uri_is_a_connect_error() {
        let error = Hypervisor::open("nosuchdriver:///x")
            .err()
            .expect("refused");
        assert!(matches!(error, HypervisorError::Connect { .. }), "{error}");
    }
}
