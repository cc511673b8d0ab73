// SPDX-License-Identifier: Apache-2.0
//! Boots the VM disk with QEMU (TCG: KVM does not work on these machines), one QEMU process
//! per boot: with `-no-reboot` a guest reboot exits QEMU, and the harness starts it again
//! and counts the boots. Each boot has its own serial log and a timeout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::markers::Markers;
use crate::vm_image::VmKernel;

/// Environment variable: per-boot timeout in seconds.
pub const BOOT_TIMEOUT_ENV: &str = "KMOD_DAY1_VM_BOOT_TIMEOUT";

/// Environment variable: `1` keeps each node's disk image after the node is done (by default
/// it is removed then, so that a run holds one disk per lane: 13 nodes of 1.2-1.6 GB each
/// filled CI's disk on 2026-12-03).
pub const KEEP_DISKS_ENV: &str = "KMOD_DAY1_VM_KEEP_DISKS";

/// Default per-boot timeout: a boot takes ~1 min under TCG; the machine is shared.
const DEFAULT_BOOT_TIMEOUT: u64 = 480;

/// vCPUs of every guest: 2 (TESTVM-NOTES' measured line) when one VM runs at a time, 1 when
/// lanes run VMs side by side. Two 2-vCPU guests on 2 host cores preempt each other's
/// vCPU threads while they hold guest spinlocks, and every boot ran 1.5-1.8x slower (CI run
/// of 2026-12-03: multi node 332 s beside another VM, 182 s alone), eating what the second
/// lane gained.
static VCPUS: AtomicU32 = AtomicU32::new(2);

/// Sets the vCPUs of the guests booted from now on (see [`VCPUS`]).
pub fn set_vcpus(n: u32) {
    VCPUS.store(n.max(1), Ordering::Relaxed);
}

/// Kernel command line of every boot (scenarios may add words).
/// `printk.devkmsg=on`: the markers are many /dev/kmsg writes, which are rate-limited by
/// default. `systemd.show_status=error`: the console keeps failures only, which is less
/// serial output to emulate and cleaner evidence.
pub const BASE_CMDLINE: &str =
    "root=/dev/vda rw console=ttyS0 panic=-1 printk.devkmsg=on net.ifnames=0 systemd.show_status=error";

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEnd {
    /// The guest powered off.
    PowerOff,
    /// The guest rebooted (QEMU exited because of `-no-reboot`).
    Reboot,
    /// The kernel panicked.
    Panic,
    /// The harness killed QEMU (a power cut).
    Killed,
    /// The boot took longer than the timeout; QEMU was killed.
    Timeout,
    /// QEMU exited without a recognizable end in the serial log.
    Unknown(String),
}

/// One boot's record.
#[derive(Debug, Clone)]
pub struct Boot {
    /// 1-based boot number on this machine.
    pub number: usize,
    /// Kernel booted.
    pub kernel: String,
    /// The serial log file.
    pub serial_path: PathBuf,
    /// Its text.
    pub serial: String,
    /// How it ended.
    pub end: BootEnd,
    /// Markers found in it.
    pub markers: Markers,
    /// Wall time of the QEMU process.
    pub secs: f64,
}

impl Boot {
    /// One line for logs and reports.
    pub fn summary(&self) -> String {
        format!(
            "boot {} ({}) ended {:?} after {:.0} s, serial log {}",
            self.number,
            self.kernel,
            self.end,
            self.secs,
            self.serial_path.display()
        )
    }
}

/// A VM: a disk, the kernel to boot, and its boots so far.
pub struct Machine {
    /// Name, used in file names and logs.
    pub name: String,
    dir: PathBuf,
    disk: PathBuf,
    /// Kernel of the next boot.
    pub kernel: VmKernel,
    /// The command line before `extra_cmdline`: [`BASE_CMDLINE`], or the boot entry's
    /// options where the harness is the boot loader (`bls_boot.rs`).
    pub base_cmdline: String,
    /// Extra kernel command line words for the next boot.
    pub extra_cmdline: String,
    /// Every boot, in order.
    pub boots: Vec<Boot>,
    timeout: Duration,
}

impl Machine {
    /// A machine booting `disk` with `kernel`, logging under `dir`.
    pub fn new(name: &str, dir: &Path, disk: &Path, kernel: VmKernel) -> Self {
        let secs = std::env::var(BOOT_TIMEOUT_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_BOOT_TIMEOUT);
        Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            disk: disk.to_owned(),
            kernel,
            base_cmdline: BASE_CMDLINE.to_owned(),
            extra_cmdline: String::new(),
            boots: vec![],
            timeout: Duration::from_secs(secs),
        }
    }

    /// Lowers the per-boot timeout to `secs` unless [`BOOT_TIMEOUT_ENV`] sets one.
    pub fn default_timeout(&mut self, secs: u64) {
        if std::env::var_os(BOOT_TIMEOUT_ENV).is_none() {
            self.timeout = Duration::from_secs(secs);
        }
    }

    /// The directory of this machine's logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The disk image (for offline inspection between boots).
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    fn command(&self, serial: &Path) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        let append = format!("{} {}", self.base_cmdline, self.extra_cmdline);
        c.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-machine",
            "q35",
        ])
        .args([
            "-smp",
            &VCPUS.load(Ordering::Relaxed).to_string(),
            "-m",
            "1024",
        ])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&self.kernel.vmlinuz)
        .arg("-initrd")
        .arg(&self.kernel.initrd)
        .args(["-append", append.trim()])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", self.disk.display()))
        .args([
            "-netdev",
            "user,id=n0,ipv6=off",
            "-device",
            "e1000,netdev=n0",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()));
        c
    }

    /// Boots once. `cut` is polled while the guest runs; when it returns true, QEMU is
    /// killed (a power cut).
    pub fn boot(&mut self, cut: &mut dyn FnMut() -> bool) -> Result<&Boot> {
        let number = self.boots.len() + 1;
        let serial_path = self
            .dir
            .join(format!("{}-boot{number}.serial.log", self.name));
        let _ = std::fs::remove_file(&serial_path);
        let mut cmd = self.command(&serial_path);
        let qemu_log = self
            .dir
            .join(format!("{}-boot{number}.qemu.log", self.name));
        let log = std::fs::File::create(&qemu_log)
            .with_context(|| format!("creating {}", qemu_log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        info!(
            "{}: boot {number} ({}) starting",
            self.name, self.kernel.release
        );
        let started = Instant::now();
        let mut child = QemuProcess(
            cmd.spawn()
                .context("starting qemu-system-x86_64 (install it with hack/install-deps vm)")?,
        );
        let child = &mut child.0;
        let mut forced = None;
        let status = loop {
            if let Some(s) = child.try_wait().context("waiting for QEMU")? {
                break Some(s);
            }
            if started.elapsed() > self.timeout {
                warn!(
                    "{}: boot {number} timed out after {} s; killing QEMU",
                    self.name,
                    self.timeout.as_secs()
                );
                forced = Some(BootEnd::Timeout);
                kill(child)?;
                break None;
            }
            if cut() {
                info!(
                    "{}: power cut in boot {number} after {:.1} s",
                    self.name,
                    started.elapsed().as_secs_f64()
                );
                forced = Some(BootEnd::Killed);
                kill(child)?;
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let secs = started.elapsed().as_secs_f64();
        let serial =
            String::from_utf8_lossy(&std::fs::read(&serial_path).unwrap_or_default()).into_owned();
        let end = forced.unwrap_or_else(|| {
            classify(&serial, status.map(|s| s.to_string()).unwrap_or_default())
        });
        let boot = Boot {
            number,
            kernel: self.kernel.release.clone(),
            markers: Markers::parse(&serial),
            serial,
            serial_path,
            end,
            secs,
        };
        info!("{}: {}", self.name, boot.summary());
        self.boots.push(boot);
        Ok(self.boots.last().expect("just pushed"))
    }

    /// Boots, following reboots, until the guest powers off (or something else ends a
    /// boot), at most `max` boots. Returns the boots made by this call.
    pub fn boot_until_poweroff(&mut self, max: usize) -> Result<&[Boot]> {
        let first = self.boots.len();
        for _ in 0..max {
            let end = self.boot(&mut || false)?.end.clone();
            if end != BootEnd::Reboot {
                break;
            }
        }
        Ok(&self.boots[first..])
    }
}

/// Kills QEMU if the harness leaves a boot early (an error, a panic): no VM outlives it.
struct QemuProcess(Child);

/// A node's disk lives as long as its machine: the serial logs stay, the disk goes unless
/// [`KEEP_DISKS_ENV`] is `1`.
impl Drop for Machine {
    fn drop(&mut self) {
        if std::env::var(KEEP_DISKS_ENV).is_ok_and(|v| v == "1") {
            return;
        }
        match std::fs::remove_file(&self.disk) {
            Ok(()) => info!("{}: disk removed ({KEEP_DISKS_ENV}=1 keeps it)", self.name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("{}: removing {}: {e}", self.name, self.disk.display()),
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn kill(child: &mut Child) -> Result<()> {
    child.kill().context("killing QEMU")?;
    child.wait().context("waiting for the killed QEMU")?;
    Ok(())
}

/// How a boot ended, from the kernel's last words on the console.
pub fn classify(serial: &str, status: String) -> BootEnd {
    if serial.contains("reboot: Power down") {
        BootEnd::PowerOff
    } else if serial.contains("reboot: Restarting system") {
        BootEnd::Reboot
    } else if serial.contains("Kernel panic") {
        BootEnd::Panic
    } else {
        BootEnd::Unknown(format!(
            "QEMU exited ({status}) without a power-off or reboot message"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_end_of_a_boot() {
        assert_eq!(
            classify("x\n[ 50.0] reboot: Power down\n", "0".into()),
            BootEnd::PowerOff
        );
        assert_eq!(
            classify("[ 50.0] reboot: Restarting system\n", "0".into()),
            BootEnd::Reboot
        );
        assert_eq!(
            classify("Kernel panic - not syncing", "0".into()),
            BootEnd::Panic
        );
        assert!(matches!(classify("", "1".into()), BootEnd::Unknown(_)));
    }

    #[test]
    fn the_command_line_is_the_measured_one() {
        let d = tempfile::tempdir().unwrap();
        let k = VmKernel {
            release: "6.1.0-1-amd64".into(),
            vmlinuz: "/v".into(),
            initrd: "/i".into(),
        };
        let mut m = Machine::new("t", d.path(), &d.path().join("disk.img"), k);
        m.extra_cmdline = "kmod_day1.disable".into();
        let line = crate::cmd::describe(&m.command(Path::new("/s.log")));
        assert!(
            line.contains("-accel tcg,thread=multi -cpu max -machine q35 -smp 2 -m 1024"),
            "{line}"
        );
        assert!(line.contains("-no-reboot"));
        assert!(
            line.contains("show_status=error kmod_day1.disable"),
            "{line}"
        );
        assert!(line.contains("-device e1000,netdev=n0"));
    }
}
