//! The local hypervisor through libvirt (the `virt` crate): define and
//! start a VM from its stored domain XML, tell whether it runs, destroy it.
//! `test:///default` (in-process, no QEMU) for demos and tests,
//! `qemu:///system` in production. Every call blocks: use it from a thread
//! or `spawn_blocking`, never on the async reactor.

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("libvirt {uri}: cannot connect: {message} (is libvirtd running? is the URI right?)")]
    Connect { uri: String, message: String },
    #[error("libvirt {uri}: {action} {domain}: {message}")]
    Domain {
        uri: String,
        domain: String,
        action: &'static str,
        message: String,
    },
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
    fn an_unknown_uri_is_a_connect_error() {
        let error = Hypervisor::open("nosuchdriver:///x")
            .err()
            .expect("refused");
        assert!(matches!(error, HypervisorError::Connect { .. }), "{error}");
    }
}
