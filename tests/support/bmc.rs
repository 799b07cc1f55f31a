//! A simulated BMC per test host: `ipmi_sim` (Debian openipmi) on
//! 127.0.0.1 with its own UDP port, user `admin` / password `secret`
//! (RMCP+, cipher suite 3), whose chassis power is the host: power off
//! SIGKILLs the host's session (its leaseholdd) and every process the test
//! started for it; power on starts the host's command again in a new
//! session. Scripts in tools/simbmc/ (shared with `leasehold demo`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const USER: &str = "admin";
/// Distinctive, so a test can look for it in logs and output.
pub const PASSWORD: &str = "Pw-7fz3Qx9k";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tools")
        .join("simbmc")
}

/// A UDP port nobody uses right now.
pub fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    socket.local_addr().expect("addr").port()
}

pub struct Bmc {
    pub port: u16,
    pub dir: PathBuf,
    pid: i32,
    pgid_file: PathBuf,
    start_file: PathBuf,
    host_log: PathBuf,
}

impl Bmc {
    /// Start a BMC whose host runs `start_command` (a shell command) when
    /// powered on; the host's output goes to `host_log`. The host is off.
    pub fn start(port: Option<u16>, dir: &Path, start_command: &str, host_log: &Path) -> Bmc {
        std::fs::create_dir_all(dir).expect("bmc dir");
        let pgid_file = dir.join("host.pgid");
        let start_file = dir.join("host.start");
        std::fs::write(&start_file, start_command).expect("start file");
        let mut last = String::new();
        for _ in 0..5 {
            let port = port.unwrap_or_else(free_udp_port);
            let out = Command::new(scripts().join("start_bmc.sh"))
                .arg(port.to_string())
                .arg(dir.join("state"))
                .arg(&pgid_file)
                .arg(&start_file)
                .env("BMC_HOSTLOG", host_log)
                .env("BMC_USER", USER)
                .env("BMC_PASSWORD", PASSWORD)
                .output()
                .expect("run start_bmc.sh (apt-get install openipmi)");
            if out.status.success() {
                let pid = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("ipmi_sim pid");
                return Bmc {
                    port,
                    dir: dir.to_path_buf(),
                    pid,
                    pgid_file,
                    start_file,
                    host_log: host_log.to_path_buf(),
                };
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        panic!("ipmi_sim did not start: {last}");
    }

    fn control(&self, args: &[&str]) -> Output {
        Command::new(scripts().join("chassis_control.sh"))
            .arg(&self.pgid_file)
            .arg(&self.start_file)
            .arg(&self.host_log)
            .args(args)
            .output()
            .expect("run chassis_control.sh")
    }

    /// Power the host on without IPMI (the first boot of a test).
    pub fn power_on_locally(&self) {
        let out = self.control(&["set", "power", "1"]);
        assert!(
            out.status.success(),
            "power on failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Power off without IPMI (test teardown).
    pub fn power_off_locally(&self) {
        let _ = self.control(&["set", "power", "0"]);
    }

    /// Is the host's session alive?
    pub fn powered(&self) -> bool {
        String::from_utf8_lossy(&self.control(&["get", "power"]).stdout).contains("power:1")
    }

    /// The host's process group (its leaseholdd's pid), while powered.
    pub fn host_pgid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pgid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|pgid: &i32| *pgid > 1)
    }

    /// A process of this host started outside its session: killed with it.
    pub fn add_member(&self, pid: u32) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.pgid_file.with_extension("pgid.members"))
            .expect("members file");
        writeln!(file, "{pid}").expect("write member");
    }

    /// `ipmitool -I lanplus -C 3` against this BMC.
    pub fn ipmitool(&self, args: &[&str]) -> Output {
        Command::new("ipmitool")
            .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", USER, "-P", PASSWORD])
            .args(args)
            .output()
            .expect("run ipmitool")
    }

    /// `fence_ipmilan` with key=value lines on stdin; returns its exit code.
    pub fn fence_ipmilan(&self, action: &str) -> i32 {
        use std::io::Write;
        let mut child = Command::new("fence_ipmilan")
            .env("PYTHONWARNINGS", "ignore")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run fence_ipmilan (apt-get install fence-agents)");
        let input = format!(
            "action={action}\nip=127.0.0.1\nipport={}\nusername={USER}\npassword={PASSWORD}\nlanplus=1\ncipher=3\npower_wait=0\n",
            self.port
        );
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        child.wait().expect("wait").code().unwrap_or(-1)
    }
}

impl Bmc {
    /// The BMC itself dies (its host stays as it is): fencing through it
    /// fails from now on.
    pub fn kill_bmc_only(&self) {
        // SAFETY: kill(2) of the ipmi_sim we started.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        self.power_off_locally();
        // SAFETY: kill(2) of the ipmi_sim we started.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
    }
}
