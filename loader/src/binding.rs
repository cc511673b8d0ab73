// SPDX-License-Identifier: Apache-2.0
//! The devices a module set must drive, and the check that it drives them. A module whose
//! init returns 0 may still bind nothing (its device table lacks the NIC's ID, its probe
//! fails): calling that a swap would leave the node without network on every boot.
//!
//! Before anything is unloaded, the devices expected to bind are those bound to the
//! in-tree modules the set removes (`/sys/module/<m>/drivers/*/<device>`) and those whose
//! `modalias` an alias of a module the set loads matches, while no driver that stays has
//! them (udev may not have bound them yet; no `udevadm settle`). After the load, each must
//! be bound to one of the set's modules (`<device>/driver/module`) within a bounded wait.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fnmatch::fnmatch;

/// How long a device may take to bind after its module loaded: ice and mlx5 probes take
/// 5-20 s (firmware load, PHY reset). `--bind-timeout` changes it.
pub const DEFAULT_BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the `driver` links are read while waiting.
const POLL: Duration = Duration::from_millis(50);

/// A device the set's modules must drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDevice {
    /// Its bus (`pci`, `usb`, `platform`, ...).
    pub bus: String,
    /// Its name on the bus (`0000:00:03.0`).
    pub name: String,
    /// Its directory (`/sys/devices/...`).
    pub path: PathBuf,
    /// Its network interfaces (`<device>/net/*`), for people.
    pub interfaces: Vec<String>,
    /// `<device>/modalias`.
    pub modalias: Option<String>,
    /// Why it is expected: `bound to in-tree e1000`, `matches an alias of e1000`.
    pub why: String,
}

impl ExpectedDevice {
    /// `pci 0000:00:03.0 (ens3)`.
    pub fn label(&self) -> String {
        if self.interfaces.is_empty() {
            format!("{} {}", self.bus, self.name)
        } else {
            format!(
                "{} {} ({})",
                self.bus,
                self.name,
                self.interfaces.join(", ")
            )
        }
    }
}

/// A module the set loads, with its `alias` modinfo patterns.
#[derive(Debug, Clone)]
pub struct ModuleAliases {
    /// Kernel name.
    pub module: String,
    /// `alias=` patterns (`pci:v00008086d0000100Esv*sd*bc*sc*i*`).
    pub aliases: Vec<String>,
}

/// What the planner found: the devices, and lines worth telling.
#[derive(Debug, Default)]
pub struct Expected {
    /// Devices to check after the load.
    pub devices: Vec<ExpectedDevice>,
    /// Devices an alias matches but a driver that stays drives, one line each.
    pub notes: Vec<String>,
}

/// The devices that the modules `unloaded` drive now, and those an alias of `loaded`
/// matches that no staying driver has. Reads `sysfs` only.
pub fn expected_devices(
    sysfs: &Path,
    unloaded: &[String],
    loaded: &[ModuleAliases],
) -> io::Result<Expected> {
    let mut out = Expected::default();
    for m in unloaded {
        for (bus, path) in devices_of_module(sysfs, m)? {
            out.push(device(&bus, &path, format!("bound to in-tree {m}")));
        }
    }
    // Without aliases nothing can match by alias: no need to read every device's modalias
    // (hundreds of sysfs reads, tens of milliseconds on a slow machine).
    if loaded.iter().all(|m| m.aliases.is_empty()) {
        return Ok(out);
    }
    for (bus, path) in bus_devices(sysfs)? {
        let Some(modalias) = read_trimmed(&path.join("modalias")) else {
            continue;
        };
        let Some(m) = loaded.iter().find(|m| matches_any(&m.aliases, &modalias)) else {
            continue;
        };
        match driving_module(&path) {
            Some(d) if unloaded.contains(&d) || d == m.module => {}
            Some(d) => out.notes.push(format!(
                "{} matches an alias of {} but is driven by {d}, which stays: not expected to bind",
                device(&bus, &path, String::new()).label(),
                m.module
            )),
            None => out.push(device(
                &bus,
                &path,
                format!("matches an alias of {}", m.module),
            )),
        }
    }
    Ok(out)
}

impl Expected {
    fn push(&mut self, d: ExpectedDevice) {
        if !self.devices.iter().any(|x| x.path == d.path) {
            self.devices.push(d);
        }
    }
}

/// A device that did not bind, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbound {
    /// The device.
    pub device: ExpectedDevice,
    /// The module that drives it instead, if any.
    pub driver_module: Option<String>,
    /// Why, as one clause: `bound to nothing after 30 s`, `no alias of e1000 matches ...`.
    pub why: String,
}

/// Waits until every device in `devices` is bound to one of `modules`, for at most
/// `timeout`. Returns the devices that are not. A device whose bus the modules have
/// aliases for, none of which matches its `modalias`, can never bind: the wait does not
/// go on for it alone (a module without aliases for that bus is waited for: it may match
/// by other means).
pub fn wait_bound(
    devices: &[ExpectedDevice],
    modules: &[ModuleAliases],
    timeout: Duration,
) -> Vec<Unbound> {
    let started = Instant::now();
    loop {
        let missing: Vec<&ExpectedDevice> = devices
            .iter()
            .filter(|d| {
                driving_module(&d.path).is_none_or(|m| !modules.iter().any(|x| x.module == m))
            })
            .collect();
        let hopeless = |d: &&ExpectedDevice| no_alias_matches(d, modules).is_some();
        if missing.is_empty() || missing.iter().all(hopeless) || started.elapsed() >= timeout {
            let waited = started.elapsed();
            return missing
                .into_iter()
                .map(|d| unbound(d, modules, waited))
                .collect();
        }
        std::thread::sleep(POLL.min(timeout.saturating_sub(started.elapsed())));
    }
}

fn unbound(d: &ExpectedDevice, modules: &[ModuleAliases], waited: Duration) -> Unbound {
    let driver_module = driving_module(&d.path);
    let names: Vec<&str> = modules.iter().map(|m| m.module.as_str()).collect();
    let why = match (&driver_module, no_alias_matches(d, modules)) {
        (_, Some(why)) => why,
        (Some(m), None) => format!("driven by {m}, not by {}", names.join(" or ")),
        (None, None) => format!(
            "bound to no driver after {:.1} s ({} loaded)",
            waited.as_secs_f64(),
            names.join(", ")
        ),
    };
    Unbound {
        device: d.clone(),
        driver_module,
        why,
    }
}

/// `Some(why)` when the modules have aliases for the device's bus and none matches its
/// `modalias`: the device ID is not in their tables.
fn no_alias_matches(d: &ExpectedDevice, modules: &[ModuleAliases]) -> Option<String> {
    let modalias = d.modalias.as_deref()?;
    let bus = modalias.split(':').next()?;
    let prefix = format!("{bus}:");
    let for_bus: Vec<&ModuleAliases> = modules
        .iter()
        .filter(|m| m.aliases.iter().any(|a| a.starts_with(&prefix)))
        .collect();
    if for_bus.is_empty() || for_bus.iter().any(|m| matches_any(&m.aliases, modalias)) {
        return None;
    }
    let names: Vec<&str> = for_bus.iter().map(|m| m.module.as_str()).collect();
    Some(format!(
        "no alias of {} matches its modalias {modalias}: the device ID is not in the module's device table",
        names.join(" or ")
    ))
}

fn matches_any(aliases: &[String], modalias: &str) -> bool {
    aliases.iter().any(|a| fnmatch(a, modalias))
}

/// The kernel name of the module whose driver is bound to the device at `path`
/// (`<device>/driver/module`), if any.
pub fn driving_module(path: &Path) -> Option<String> {
    let target = fs::read_link(path.join("driver").join("module")).ok()?;
    Some(target.file_name()?.to_str()?.to_owned())
}

/// `(bus, device dir)` of every device the module's drivers have bound:
/// `/sys/module/<m>/drivers/<bus>:<driver>` links to the driver, whose other links
/// (all but `module`) are its devices.
fn devices_of_module(sysfs: &Path, module: &str) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = vec![];
    for (entry, _) in links(&sysfs.join("module").join(module).join("drivers"))? {
        let Some((bus, _)) = entry.split_once(':') else {
            continue;
        };
        let driver = sysfs
            .join("module")
            .join(module)
            .join("drivers")
            .join(&entry);
        for (name, target) in links(&driver)? {
            if name != "module" {
                out.push((bus.to_owned(), target));
            }
        }
    }
    Ok(out)
}

/// `(bus, device dir)` of every device on every bus (`/sys/bus/*/devices/*`).
fn bus_devices(sysfs: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = vec![];
    for (bus, _) in entries(&sysfs.join("bus"))? {
        for (_, target) in links(&sysfs.join("bus").join(&bus).join("devices"))? {
            out.push((bus.clone(), target));
        }
    }
    Ok(out)
}

fn device(bus: &str, path: &Path, why: String) -> ExpectedDevice {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut interfaces: Vec<String> = entries(&path.join("net"))
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    interfaces.sort();
    ExpectedDevice {
        bus: bus.to_owned(),
        name,
        path: path.to_owned(),
        interfaces,
        modalias: read_trimmed(&path.join("modalias")),
        why,
    }
}

/// Names and paths in `dir`, sorted; a missing directory is empty.
fn entries(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    };
    let mut out: Vec<(String, PathBuf)> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().into_string().ok()?, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The symbolic links in `dir`, with their resolved targets (links that do not resolve
/// are left out: a device going away).
fn links(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|(_, p)| p.symlink_metadata().is_ok_and(|m| m.is_symlink()))
        .filter_map(|(n, p)| Some((n, fs::canonicalize(p).ok()?)))
        .collect())
}

fn read_trimmed(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::FakeSysfs;

    const NIC_ALIAS: &str = "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00";

    fn e1000(aliases: &[&str]) -> Vec<ModuleAliases> {
        vec![ModuleAliases {
            module: "e1000".into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        }]
    }

    #[test]
    fn devices_of_removed_modules_and_unbound_alias_matches_are_expected() {
        let s = FakeSysfs::new();
        s.device("pci", "0000:00:03.0", NIC_ALIAS, Some("ens3"));
        s.bind("pci", "0000:00:03.0", "e1000", "e1000");
        s.device("pci", "0000:00:04.0", NIC_ALIAS, Some("ens4"));
        s.device("pci", "0000:00:05.0", "pci:v00001AF4d00001000sv*", None);
        let loaded = e1000(&["pci:v00008086d0000100Esv*sd*bc*sc*i*"]);
        let e = expected_devices(s.root(), &["e1000".into()], &loaded).unwrap();
        let got: Vec<(String, &str)> = e
            .devices
            .iter()
            .map(|d| (d.label(), d.why.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("pci 0000:00:03.0 (ens3)".into(), "bound to in-tree e1000"),
                (
                    "pci 0000:00:04.0 (ens4)".into(),
                    "matches an alias of e1000"
                ),
            ]
        );
        assert!(e.notes.is_empty(), "{:?}", e.notes);
    }

    #[test]
    fn a_device_a_staying_driver_has_is_a_note_not_an_expectation() {
        let s = FakeSysfs::new();
        s.device("pci", "0000:00:03.0", NIC_ALIAS, None);
        s.bind("pci", "0000:00:03.0", "vfio-pci", "vfio_pci");
        let loaded = e1000(&["pci:v00008086d*sv*sd*bc*sc*i*"]);
        let e = expected_devices(s.root(), &[], &loaded).unwrap();
        assert!(e.devices.is_empty());
        assert_eq!(e.notes.len(), 1);
        assert!(
            e.notes[0].contains("driven by vfio_pci, which stays"),
            "{}",
            e.notes[0]
        );
    }

    #[test]
    fn a_set_for_no_hardware_expects_nothing() {
        let s = FakeSysfs::new();
        s.device("pci", "0000:00:03.0", NIC_ALIAS, None);
        let accel = vec![ModuleAliases {
            module: "kd1_main".into(),
            aliases: vec![],
        }];
        let e = expected_devices(s.root(), &[], &accel).unwrap();
        assert!(e.devices.is_empty() && e.notes.is_empty());
    }

    #[test]
    fn a_bound_device_passes_at_once() {
        let s = FakeSysfs::new();
        s.device("pci", "0000:00:03.0", NIC_ALIAS, Some("ens3"));
        let loaded = e1000(&["pci:v00008086d0000100Esv*sd*bc*sc*i*"]);
        let e = expected_devices(s.root(), &[], &loaded).unwrap();
        s.bind("pci", "0000:00:03.0", "e1000", "e1000");
        let t = Instant::now();
        assert_eq!(wait_bound(&e.devices, &loaded, Duration::from_secs(20)), []);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_device_id_missing_from_the_table_fails_without_waiting() {
        let s = FakeSysfs::new();
        s.device("pci", "0000:00:03.0", NIC_ALIAS, Some("ens3"));
        s.bind("pci", "0000:00:03.0", "e1000", "e1000");
        let e = expected_devices(s.root(), &["e1000".into()], &[]).unwrap();
        s.unbind("pci", "0000:00:03.0");
        let other_ids = e1000(&["pci:v00008086d00001000sv*sd*bc*sc*i*"]);
        let t = Instant::now();
        let u = wait_bound(&e.devices, &other_ids, Duration::from_secs(20));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(u.len(), 1);
        assert!(
            u[0].why.contains("no alias of e1000 matches its modalias"),
            "{}",
            u[0].why
        );
    }

    #[test]
    fn an_unbound_device_is_waited_for_until_the_timeout() {
        let s = FakeSysfs::new();
        s.device("pci", "0000:00:03.0", NIC_ALIAS, None);
        let loaded = e1000(&["pci:v00008086d0000100Esv*sd*bc*sc*i*"]);
        let e = expected_devices(s.root(), &[], &loaded).unwrap();
        let t = Instant::now();
        let u = wait_bound(&e.devices, &loaded, Duration::from_millis(300));
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(u.len(), 1);
        assert!(
            u[0].why.starts_with("bound to no driver after"),
            "{}",
            u[0].why
        );
    }

    #[test]
    fn a_device_bound_to_another_module_is_reported_with_it() {
        let s = FakeSysfs::new();
        s.device("pci", "0000:00:03.0", NIC_ALIAS, None);
        s.bind("pci", "0000:00:03.0", "e1000", "e1000");
        let e = expected_devices(s.root(), &["e1000".into()], &[]).unwrap();
        let u = wait_bound(&e.devices, &e1000(&[])[..0], Duration::from_millis(100));
        assert_eq!(u[0].driver_module.as_deref(), Some("e1000"));
    }
}
