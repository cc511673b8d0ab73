// SPDX-License-Identifier: Apache-2.0
//! `--dry-run`: the plans the real run would execute (`set_plan::plan_swap`, the same
//! planner), printed as text or, with `--json`, as one JSON document on stdout. Nothing is
//! touched and no status is written.

use std::path::Path;

use kmod_day1_contract::{KernelRelease, SetState, SymbolVersions};
use serde_json::{json, Value};

use crate::modprobe_conf::{ModprobeConfig, NamedLine};
use crate::plan::{Origin, PlannedModule};
use crate::secure_boot::{Keyrings, ModuleTrust};
use crate::set_plan::SetPlan;

/// Whose view of loaded modules the plan uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelView {
    /// The running kernel's (`/sys/module`): planning for the running release.
    Running,
    /// Planning for another release (another deployment's kernel): nothing loaded but each
    /// set's in-tree modules to remove.
    FreshBoot,
}

/// One module set in a dry run.
#[derive(Debug)]
pub struct DrySet {
    /// `config/set`.
    pub label: String,
    /// `Loaded` means "would swap" (the plan is in `plan`).
    pub state: SetState,
    pub image: Option<String>,
    pub manifest_digest: Option<String>,
    pub error: Option<String>,
    pub plan: Option<SetPlan>,
    /// The symbol check's report, when the plan got that far (also when it refused the set).
    pub symbols: Option<SymbolVersions>,
}

impl DrySet {
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            state: SetState::NotStored,
            image: None,
            manifest_digest: None,
            error: None,
            plan: None,
            symbols: None,
        }
    }
}

/// A whole dry run.
pub struct DryRun<'a> {
    kernel_release: &'a KernelRelease,
    modules_dir: &'a Path,
    view: KernelView,
    modprobe: &'a ModprobeConfig,
    /// `kmod_day1.disable` is on the command line: the real run would do nothing.
    disabled: bool,
    /// Config files that could not be used.
    pub errors: Vec<String>,
    pub sets: Vec<DrySet>,
    /// The running kernel's module signature rules (Secure Boot preflight).
    pub module_trust: Option<&'a ModuleTrust>,
}

impl<'a> DryRun<'a> {
    pub fn new(
        kernel_release: &'a KernelRelease,
        modules_dir: &'a Path,
        view: KernelView,
        modprobe: &'a ModprobeConfig,
        disabled: bool,
    ) -> Self {
        Self {
            kernel_release,
            modules_dir,
            view,
            modprobe,
            disabled,
            errors: vec![],
            sets: vec![],
            module_trust: None,
        }
    }

    /// Prints the plan on stdout.
    pub fn print(&self, as_json: bool, firmware_dir: &Path) {
        if as_json {
            println!(
                "{}",
                serde_json::to_string_pretty(&self.to_json(firmware_dir)).expect("JSON")
            );
        } else {
            print!("{}", self.to_text(firmware_dir));
        }
    }

    /// The plan as JSON (`--dry-run --json`).
    pub fn to_json(&self, firmware_dir: &Path) -> Value {
        let c = self.modprobe;
        let named = |v: &[NamedLine], key: &str| -> Vec<Value> {
            v.iter()
                .map(|l| {
                    let mut o = json!({"module": l.pattern, "source": l.source.to_string()});
                    if !key.is_empty() {
                        o[key] = json!(l.value);
                    }
                    o
                })
                .collect()
        };
        json!({
            "kernelRelease": self.kernel_release.as_str(),
            "modulesDir": self.modules_dir.display().to_string(),
            "kernelState": match self.view {
                KernelView::Running => "running",
                KernelView::FreshBoot => "freshBoot",
            },
            "disabledOnCommandLine": self.disabled,
            "moduleSignatures": self.module_trust.map(signatures_json),
            "modprobe": {
                "files": c.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "warnings": c.warnings,
                "blacklist": named(&c.blacklist, ""),
                "install": named(&c.install, "command"),
                "remove": named(&c.remove, "command"),
                "alias": c.aliases.iter().map(|l| json!({"alias": l.pattern, "module": l.value, "source": l.source.to_string()})).collect::<Vec<_>>(),
                "options": c.options.iter().map(|o| json!({"module": o.module, "options": o.options, "source": o.source.to_string()})).collect::<Vec<_>>(),
                "softdep": c.softdeps.iter().map(|s| json!({"module": s.pattern, "pre": s.pre, "post": s.post, "source": s.source.to_string()})).collect::<Vec<_>>(),
                "kernelModuleBlacklist": c.kernel_blacklist,
            },
            "errors": self.errors,
            "sets": self.sets.iter().map(|s| set_json(s, firmware_dir)).collect::<Vec<_>>(),
        })
    }

    /// The plan as text (`--dry-run`).
    pub fn to_text(&self, firmware_dir: &Path) -> String {
        let mut t = format!(
            "kmod-day1-load dry run: kernel {}, modules {}; nothing is touched\n",
            self.kernel_release,
            self.modules_dir.display()
        );
        t += match self.view {
            KernelView::Running => "loaded modules: the running kernel's\n",
            KernelView::FreshBoot => "loaded modules: another kernel's, as at its boot: none but the in-tree modules to remove (udev loads those first, usually)\n",
        };
        if self.disabled {
            t += "kmod_day1.disable is on the kernel command line: the real run does nothing\n";
        }
        if let Some(m) = self.module_trust {
            t += &format!("{} (the running kernel's)\n", m.summary());
        }
        t += &format!(
            "modprobe configuration: {} files\n",
            self.modprobe.files.len()
        );
        for f in &self.modprobe.files {
            t += &format!("  {}\n", f.display());
        }
        for w in &self.modprobe.warnings {
            t += &format!("  warning: {w}\n");
        }
        for e in &self.errors {
            t += &format!("error: {e}\n");
        }
        for s in &self.sets {
            t += &set_text(s, firmware_dir);
        }
        t
    }
}

fn state_name(s: &DrySet) -> &'static str {
    match s.state {
        SetState::Loaded => "wouldSwap",
        SetState::NotStored => "notStored",
        SetState::NoImage => "noImage",
        SetState::Skipped => "skipped",
        SetState::Failed => "failed",
        SetState::NotBound => "notBound",
    }
}

fn module_json(m: &PlannedModule) -> Value {
    let mut o = json!({
        "name": m.name,
        "path": m.path.display().to_string(),
        "origin": origin(m.origin),
        "reason": m.reason.to_string(),
        "required": m.required,
        "alreadyLoaded": m.already_loaded,
        "parameters": m.params.iter().map(|p| json!({"value": p.text, "source": p.source.to_string()})).collect::<Vec<_>>(),
    });
    if let Some(b) = &m.blacklisted {
        o["blacklistedBy"] = json!(b.to_string());
    }
    if let Some(v) = &m.signature {
        o["signature"] = json!(v.to_string());
    }
    o
}

fn signatures_json(m: &ModuleTrust) -> Value {
    json!({
        "enforcedBy": m.enforcement.as_ref().map(ToString::to_string),
        "trustedKeys": match &m.keyrings {
            Keyrings::Read { keys, .. } => json!(keys.iter().map(|k| json!({"keyring": k.keyring, "description": k.description})).collect::<Vec<_>>()),
            Keyrings::Unreadable(_) => Value::Null,
        },
        "summary": m.summary(),
    })
}

fn origin(o: Origin) -> &'static str {
    match o {
        Origin::Image => "image",
        Origin::InTree => "node",
    }
}

fn set_json(s: &DrySet, firmware_dir: &Path) -> Value {
    let (config, set) = s.label.split_once('/').unwrap_or((&s.label, ""));
    let mut o = json!({
        "config": config,
        "set": set,
        "state": state_name(s),
        "image": s.image,
        "manifestDigest": s.manifest_digest,
        "error": s.error,
        "symbolVersions": s.symbols,
    });
    if let Some(p) = &s.plan {
        o["unload"] = json!(p.unload);
        o["firmware"] = match &p.firmware {
            Some(from) => {
                json!({"from": from.display().to_string(), "to": firmware_dir.display().to_string()})
            }
            None => Value::Null,
        };
        o["load"] = p.load.iter().map(module_json).collect();
        o["devicesToBind"] = p
            .devices
            .iter()
            .map(|d| {
                json!({
                    "device": format!("{} {}", d.bus, d.name),
                    "interfaces": d.interfaces,
                    "modalias": d.modalias,
                    "why": d.why,
                })
            })
            .collect();
        o["rollback"] = p
            .rollback
            .iter()
            .map(|r| match &r.plan {
                Ok(l) => json!({"module": r.module, "load": l.iter().map(module_json).collect::<Vec<_>>()}),
                Err(e) => json!({"module": r.module, "error": e}),
            })
            .collect();
        o["notes"] = json!(p.notes);
    }
    o
}

fn module_line(i: usize, m: &PlannedModule) -> String {
    let mut l = format!(
        "    {}. {} ({}, {}) {}",
        i + 1,
        m.name,
        m.reason,
        origin(m.origin),
        m.path.display()
    );
    if m.already_loaded {
        l += " [already loaded: nothing to do]";
    }
    if !m.required {
        l += " [a failure is only a warning]";
    }
    l += "\n";
    // The kernel applies parameters in order: a later value of the same name wins.
    let name = |t: &str| t.split('=').next().unwrap_or_default().replace('-', "_");
    for (i, p) in m.params.iter().enumerate() {
        let overridden = m.params[i + 1..]
            .iter()
            .any(|q| name(&q.text) == name(&p.text));
        l += &format!(
            "         {}   <- {}{}\n",
            p.text,
            p.source,
            if overridden {
                " (overridden below)"
            } else {
                ""
            }
        );
    }
    if let Some(b) = &m.blacklisted {
        l += &format!("         blacklisted at {b}: loaded anyway, as modprobe loads a module named directly\n");
    }
    if let Some(v) = &m.signature {
        l += &format!("         signature: {v}\n");
    }
    l
}

fn set_text(s: &DrySet, firmware_dir: &Path) -> String {
    let mut t = format!("\n{}: {}", s.label, state_name(s));
    if let Some(i) = &s.image {
        t += &format!(" {i}");
    }
    if let Some(d) = &s.manifest_digest {
        t += &format!(" ({d})");
    }
    t += "\n";
    if let Some(e) = &s.error {
        t += &format!("  error: {e}\n");
    }
    if let Some(sv) = &s.symbols {
        t += &format!("  {}\n", sv.summary());
        for m in &sv.mismatches {
            t += &format!(
                "    {} imports {}: CRC {}, the kernel's {}\n",
                m.module,
                m.symbol,
                m.module_crc,
                m.kernel_crc.as_deref().unwrap_or("none (not exported)")
            );
        }
    }
    let Some(p) = &s.plan else { return t };
    if p.unload.is_empty() {
        t += "  unload: nothing\n";
    } else {
        t += &format!("  unload: {}\n", p.unload.join(", "));
    }
    if let Some(fw) = &p.firmware {
        t += &format!(
            "  firmware: copy {} to {}\n",
            fw.display(),
            firmware_dir.display()
        );
    }
    t += "  load, in order:\n";
    for (i, m) in p.load.iter().enumerate() {
        t += &module_line(i, m);
    }
    if p.devices.is_empty() {
        t += "  devices expected to bind: none\n";
    } else {
        t += "  devices expected to bind:\n";
        for d in &p.devices {
            t += &format!("    {} <- {}\n", d.label(), d.why);
        }
    }
    if !p.rollback.is_empty() {
        t += "  on failure, the rollback loads back:\n";
        for r in &p.rollback {
            match &r.plan {
                Ok(l) => {
                    t += &format!("   {}:\n", r.module);
                    for (i, m) in l.iter().enumerate() {
                        t += &module_line(i, m);
                    }
                }
                Err(e) => t += &format!("   {}: cannot: {e}\n", r.module),
            }
        }
    }
    for n in &p.notes {
        t += &format!("  note: {n}\n");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelModules;
    use crate::modules_dep::ModuleIndex;
    use crate::set_plan::{plan_swap, Node, SetInput};
    use crate::testutil::{FakeKernel, FakeSysfs, Fixture, KVER};

    /// The plan of an ice set on a node with in-tree ice loaded, and the dry run around it.
    fn dry(f: &Fixture, k: &FakeKernel) -> (Value, String) {
        let in_tree = ModuleIndex::in_tree(f.node_dir());
        let image = ModuleIndex::image(f.image_dir());
        let modprobe = f.modprobe_config();
        let (sysfs, fw) = (f.sysfs(), f.firmware_dir());
        let node = Node {
            kernel_release: KVER,
            in_tree: &in_tree,
            modprobe: &modprobe,
            sysfs: &sysfs,
            firmware_dir: &fw,
            bind_timeout: std::time::Duration::ZERO,
            module_trust: &crate::secure_boot::ModuleTrust::not_enforced(),
            symvers: &crate::symvers::KernelSymvers::search(&f.node_dir(), &f.path("boot"), KVER),
        };
        let mut set = f.set(&["ice"], &["ice"]);
        set.modules[0].parameters = vec!["debug=1".parse().unwrap()];
        let state = |n: &str| k.module_state(n);
        let fw_src = f.image_firmware();
        let input = SetInput {
            label: "99-ice/ice",
            set: &set,
            image: &image,
            firmware: Some(&fw_src),
            image_ref: "registry.local/kmod/ice:v1",
        };
        let kver = KernelRelease::new(KVER).unwrap();
        let dir = f.node_dir();
        let mut d = DryRun::new(&kver, &dir, KernelView::Running, &modprobe, false);
        let mut s = DrySet::new("99-ice/ice");
        s.state = SetState::Loaded;
        s.image = Some("registry.local/kmod/ice:v1".into());
        s.plan = Some(plan_swap(&state, node, input).unwrap());
        d.sets.push(s);
        (d.to_json(&fw), d.to_text(&fw))
    }

    #[test]
    fn the_plan_with_every_parameter_and_its_source() {
        let f = Fixture::new();
        f.node_module("dpll", "kernel/dpll.ko.zst", &[]);
        f.node_module("ice", "kernel/ice.ko.xz", &["dpll"]);
        f.image_module("ice", "SRC-OOT", &["dpll"]);
        f.modprobe_d(
            "etc/modprobe.d/ice.conf",
            "options ice a=1 debug=0\nblacklist dpll\nremove ice /bin/true\n",
        );
        f.set_cmdline("ice.b=2");
        let sys = FakeSysfs::at(&f.sysfs());
        sys.device(
            "pci",
            "0000:3b:00.0",
            "pci:v00008086d00001592sv0",
            Some("ens1f0"),
        );
        sys.bind("pci", "0000:3b:00.0", "ice", "ice");
        let mut k = FakeKernel::new();
        k.preload("ice", "INTREE-ice");
        let (j, text) = dry(&f, &k);
        assert!(k.calls.is_empty(), "a dry run touches nothing");
        let conf = f.path("etc/modprobe.d/ice.conf").display().to_string();
        assert_eq!(j["kernelState"], "running");
        assert_eq!(j["modprobe"]["files"][0], conf.as_str());
        assert_eq!(j["modprobe"]["options"][1]["source"], "kernel command line");
        let s = &j["sets"][0];
        assert_eq!(s["state"], "wouldSwap");
        assert_eq!(s["unload"], json!(["ice"]));
        let load = s["load"].as_array().unwrap();
        let names: Vec<_> = load.iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["dpll", "ice"]);
        assert_eq!(load[0]["origin"], "node");
        assert_eq!(load[0]["blacklistedBy"], format!("{conf}:2"));
        assert_eq!(load[1]["reason"], "configured");
        // Secure Boot preflight's verdict, on image modules only.
        assert_eq!(load[1]["signature"], "not signed");
        assert!(load[0].get("signature").is_none());
        assert_eq!(
            load[1]["parameters"],
            json!([
                {"value": "a=1", "source": format!("{conf}:1")},
                {"value": "debug=0", "source": format!("{conf}:1")},
                {"value": "b=2", "source": "kernel command line"},
                {"value": "debug=1", "source": "kmod-day1 config"},
            ])
        );
        let back = &s["rollback"][0];
        assert_eq!(back["module"], "ice");
        let back: Vec<_> = back["load"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["parameters"].as_array().unwrap().len(),
                )
            })
            .collect();
        assert_eq!(back, [("dpll", 0), ("ice", 3)]);
        assert!(s["notes"][0]
            .as_str()
            .unwrap()
            .contains("`remove ice /bin/true` is not run"));
        assert_eq!(s["firmware"]["to"], f.firmware_dir().display().to_string());
        assert_eq!(
            s["devicesToBind"],
            json!([{
                "device": "pci 0000:3b:00.0",
                "interfaces": ["ens1f0"],
                "modalias": "pci:v00008086d00001592sv0",
                "why": "bound to in-tree ice",
            }])
        );

        for want in [
            "99-ice/ice: wouldSwap registry.local/kmod/ice:v1",
            "  unload: ice",
            "    1. dpll (dependency of ice, node)",
            "    2. ice (configured, image)",
            "         a=1   <- ",
            "         debug=0   <- ",
            "(overridden below)",
            "         debug=1   <- kmod-day1 config",
            "  on failure, the rollback loads back:",
            "blacklisted at ",
            "         signature: not signed\n",
            "  devices expected to bind:\n    pci 0000:3b:00.0 (ens1f0) <- bound to in-tree ice",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }

    /// The dry run of a set whose ice imports `pci_enable_device` with `crc`, against a
    /// kernel table exporting it with 0x5678ef01.
    fn dry_symbols(crc: u32) -> (Value, String) {
        let f = Fixture::new();
        f.node_module("ice", "kernel/ice.ko", &[]);
        f.image_module_symbols(
            "ice",
            &[],
            &[("module_layout", 1), ("pci_enable_device", crc)],
            &[],
        );
        f.node_symvers(&[
            ("module_layout", 1, "vmlinux"),
            ("pci_enable_device", 0x5678_ef01, "vmlinux"),
        ]);
        let in_tree = ModuleIndex::in_tree(f.node_dir());
        let image = ModuleIndex::image(f.image_dir());
        let modprobe = f.modprobe_config();
        let (sysfs, fw) = (f.sysfs(), f.firmware_dir());
        let symvers = crate::symvers::KernelSymvers::search(&f.node_dir(), &f.path("boot"), KVER);
        let node = Node {
            kernel_release: KVER,
            in_tree: &in_tree,
            modprobe: &modprobe,
            sysfs: &sysfs,
            firmware_dir: &fw,
            bind_timeout: std::time::Duration::ZERO,
            module_trust: &crate::secure_boot::ModuleTrust::not_enforced(),
            symvers: &symvers,
        };
        let set = f.set(&["ice"], &["ice"]);
        let input = SetInput {
            label: "99-ice/ice",
            set: &set,
            image: &image,
            firmware: None,
            image_ref: "registry.local/kmod/ice:v1",
        };
        let kver = KernelRelease::new(KVER).unwrap();
        let dir = f.node_dir();
        let mut d = DryRun::new(&kver, &dir, KernelView::FreshBoot, &modprobe, false);
        let mut s = DrySet::new("99-ice/ice");
        let state = |n: &str| Ok((n == "ice").then(crate::kernel::ModuleState::default));
        match plan_swap(&state, node, input) {
            Ok(p) => {
                s.state = SetState::Loaded;
                s.symbols = Some(p.symbols.clone());
                s.plan = Some(p);
            }
            Err(e) => {
                s.state = SetState::Failed;
                s.error = Some(e.to_string());
                s.symbols = e.symbols;
            }
        }
        d.sets.push(s);
        (d.to_json(&fw), d.to_text(&fw))
    }

    #[test]
    fn symbol_versions_checked_or_mismatched_in_the_plan() {
        let (j, text) = dry_symbols(0x5678_ef01);
        let s = &j["sets"][0];
        assert_eq!(s["state"], "wouldSwap");
        let sv = &s["symbolVersions"];
        assert_eq!(sv["checked"], 2);
        assert!(
            sv["table"].as_str().unwrap().ends_with("/symvers.gz"),
            "{sv}"
        );
        assert!(sv.get("mismatches").is_none(), "{sv}");
        assert!(
            text.contains("  symbol versions: 2 checked against "),
            "{text}"
        );

        let (j, text) = dry_symbols(0x1234_abcd);
        let s = &j["sets"][0];
        assert_eq!(s["state"], "failed");
        assert!(s["error"].as_str().unwrap().contains(
            "ice imports pci_enable_device with CRC 0x1234abcd, the kernel exports 0x5678ef01"
        ));
        assert_eq!(
            s["symbolVersions"]["mismatches"],
            json!([{"module": "ice", "symbol": "pci_enable_device", "moduleCrc": "0x1234abcd", "kernelCrc": "0x5678ef01"}])
        );
        assert!(
            text.contains(
                "    ice imports pci_enable_device: CRC 0x1234abcd, the kernel's 0x5678ef01\n"
            ),
            "{text}"
        );
    }
}
