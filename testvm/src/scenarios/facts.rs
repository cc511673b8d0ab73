// SPDX-License-Identifier: Apache-2.0
//! Facts read from one boot's markers and serial log, and the checks most scenarios share.

use kmod_day1_contract::{BootStatus, SetState};

use crate::markers::{excerpt, first_line};
use crate::modules_build::{OOT_E1000_MARKER, OOT_E1000_VERSION};
use crate::qemu::{Boot, BootEnd};
use crate::scenarios::report::Report;

/// Lines of serial log shown as evidence.
const EXCERPT: usize = 40;

/// The facts of one boot.
pub struct BootFacts<'a> {
    /// The boot.
    pub boot: &'a Boot,
    /// Phase whose markers are read: `final` (before power-off) or `prepull`.
    pub phase: &'static str,
}

impl<'a> BootFacts<'a> {
    /// Facts of the final markers of `boot`.
    pub fn new(boot: &'a Boot) -> Self {
        Self {
            boot,
            phase: "final",
        }
    }

    /// Facts of the markers written before kmod-day1-pull ran.
    pub fn prepull(boot: &'a Boot) -> Self {
        Self {
            boot,
            phase: "prepull",
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.phase)
    }

    /// A marker of this phase.
    pub fn get(&self, k: &str) -> Option<&'a str> {
        self.boot.markers.get(&self.key(k))
    }

    /// A file sent by this phase.
    pub fn file(&self, k: &str) -> Option<String> {
        self.boot.markers.file(&self.key(k))
    }

    /// `/sys/module/e1000/version` (`none` for the in-tree driver, which has none).
    pub fn e1000_version(&self) -> &'a str {
        self.get("e1000_version").unwrap_or("(no marker)")
    }

    /// Whether the out-of-tree e1000 drives the NIC.
    pub fn oot_e1000(&self) -> bool {
        self.e1000_version() == OOT_E1000_VERSION
    }

    /// The IPv4 address of eth0.
    pub fn ipv4(&self) -> &'a str {
        self.get("ipv4").unwrap_or("").trim()
    }

    /// Whether eth0 has its DHCP address from QEMU's user network.
    pub fn network_up(&self) -> bool {
        self.ipv4().starts_with("10.0.2.15/")
    }

    /// Boot 1 of a first apply: the in-tree e1000 had the link up before the pull downloaded.
    /// At the markers before the pull when it was bound by then; otherwise its link line in
    /// the kernel log before the pull's download. Under TCG load udev may load the in-tree
    /// driver only after `network-online.target` (NetworkManager-wait-online returns at
    /// once when there is no device yet), and the pull's retries wait for the network.
    pub fn in_tree_link_before_pull(&self) -> bool {
        if self.oot_e1000() {
            return false;
        }
        if self.network_up() {
            return true;
        }
        let serial = &self.boot.serial;
        let link = serial.find("e1000: eth0 NIC Link is Up");
        let download = serial
            .lines()
            .find(|l| l.contains("kmod-day1-pull[") && l.contains(" downloading "))
            .and_then(|l| serial.find(l));
        matches!((link, download), (Some(l), Some(d)) if l < d)
    }

    /// A unit's `systemctl show` property.
    pub fn unit_prop(&self, unit: &str, prop: &str) -> Option<String> {
        self.boot
            .markers
            .props(&self.key(&format!("unit.{unit}")))
            .get(prop)
            .cloned()
    }

    /// A unit's timestamp property in microseconds since kernel start (0/absent: never).
    pub fn unit_us(&self, unit: &str, prop: &str) -> Option<u64> {
        self.unit_prop(unit, prop)
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
    }

    /// The loader's status file.
    pub fn status(&self) -> Option<BootStatus> {
        self.file("status")
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    /// The state of module set `set` in the status file.
    pub fn set_state(&self, set: &str) -> Option<SetState> {
        self.status()?
            .sets
            .into_iter()
            .find(|s| s.set == set)
            .map(|s| s.state)
    }

    /// Kernel time (s) of the out-of-tree e1000's load marker.
    pub fn oot_marker_time(&self) -> Option<f64> {
        first_line(&self.boot.serial, OOT_E1000_MARKER).and_then(|(t, _)| t)
    }

    /// Serial log excerpt around `needle` (or its end).
    pub fn excerpt(&self, needle: &str) -> String {
        format!(
            "{}:\n{}",
            self.boot.serial_path.display(),
            excerpt(&self.boot.serial, needle, EXCERPT)
        )
    }

    /// The lines `journalctl -b -p err` lists for the syslog identifier `ident`
    /// (`kmod-day1-load`, `kmod-day1-pull`), as the guest sent them.
    pub fn journal_errors(&self, ident: &str) -> Option<String> {
        self.file(&format!("journal_err.{ident}"))
    }

    /// The kmod-day1 units' journal as the guest sent it.
    pub fn journal(&self) -> String {
        self.file("journal")
            .unwrap_or_else(|| "(no journal marker)".into())
    }
}

/// Checks that the boot ended as expected.
pub fn check_end(r: &mut Report, boot: &Boot, want: BootEnd) {
    r.check(
        &format!("boot {} ends with {want:?}", boot.number),
        boot.end == want,
        format!("{:?} after {:.0} s ({})", boot.end, boot.secs, boot.kernel),
        || excerpt(&boot.serial, "reboot:", EXCERPT),
    );
}

/// The out-of-tree e1000 is loaded and was loaded before NetworkManager started; the
/// network is up on it, without a default route.
pub fn check_oot_before_nm(r: &mut Report, f: &BootFacts) {
    let n = f.boot.number;
    r.check(
        &format!("boot {n}: out-of-tree e1000 drives the NIC"),
        f.oot_e1000() && f.get("eth0_driver") == Some("e1000"),
        format!(
            "/sys/module/e1000/version={} eth0 driver={}",
            f.e1000_version(),
            f.get("eth0_driver").unwrap_or("?")
        ),
        || f.excerpt("e1000"),
    );
    let load_done = f.unit_us("kmod-day1-load.service", "ActiveEnterTimestampMonotonic");
    let nm_start = f.unit_us("NetworkManager.service", "InactiveExitTimestampMonotonic");
    let marker = f.oot_marker_time();
    let ordered = matches!((load_done, nm_start, marker), (Some(l), Some(s), Some(m)) if l <= s && m * 1e6 <= s as f64);
    r.check(
        &format!("boot {n}: swap finished before NetworkManager started"),
        ordered,
        format!(
            "OOT e1000 marker at {} s, kmod-day1-load active at {} s, NetworkManager started at {} s",
            fmt_s(marker),
            fmt_us(load_done),
            fmt_us(nm_start)
        ),
        || f.journal(),
    );
    check_network(r, f);
}

/// How the boots from index `from` on ended, checked against `want`; every boot's summary
/// is the evidence.
pub fn check_boot_ends(r: &mut Report, what: &str, boots: &[Boot], from: usize, want: &[BootEnd]) {
    let ends: Vec<&BootEnd> = boots.iter().skip(from).map(|b| &b.end).collect();
    r.check(
        what,
        ends.iter().copied().eq(want.iter()),
        format!("boot ends from boot {}: {ends:?}", from + 1),
        || {
            boots
                .iter()
                .map(|b| b.summary())
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
}

/// eth0 has its address and the node has no default route.
pub fn check_network(r: &mut Report, f: &BootFacts) {
    let n = f.boot.number;
    r.check(
        &format!("boot {n}: network up, no default route"),
        f.network_up() && f.get("default_routes") == Some("0"),
        format!(
            "eth0 {} ; default routes {}",
            f.ipv4(),
            f.get("default_routes").unwrap_or("?")
        ),
        || f.excerpt("NetworkManager"),
    );
}

/// Seconds from microseconds, for reports.
pub fn fmt_us(us: Option<u64>) -> String {
    us.map_or("?".into(), |u| format!("{:.2}", u as f64 / 1e6))
}

fn fmt_s(s: Option<f64>) -> String {
    s.map_or("?".into(), |s| format!("{s:.2}"))
}
