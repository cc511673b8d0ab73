// SPDX-License-Identifier: Apache-2.0
//! The `mcgen` command line: KMM's `day1-utility` flags or a spec file in, a
//! MachineConfig, an Ignition config or a Containerfile out.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Parser, ValueEnum};

use crate::{
    containerfile, disruption_policy_yaml, field_manager, parse_spec, prestage_yaml, Day1Config,
    Delivery, Error, Generator, IgnitionVersion, KmmArgs, NodeImage, NodeSelector, OnChange,
    Remediation, DEFAULT_MAX_BYTES, MAX_ENTRIES, NAMESPACE,
};

/// What mcgen writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A MachineConfig (YAML) for `oc apply -f`.
    Machineconfig,
    /// A raw Ignition config (JSON) for installer time.
    Ignition,
    /// A Containerfile that layers the node binaries into the OS image.
    Containerfile,
    /// The node config file (/etc/kmod-day1/config.d/<machine-config>.json), for
    /// `kmod-day1-pull --kernel-release` preparing a --bundle store on any machine.
    NodeConfig,
    /// An initrd to append to an initramfs (gzip-compressed cpio, newc): --loader, the config,
    /// --modprobe-d, the --bundle store and the unit that loads before the network in a systemd
    /// initramfs.
    Initrd,
    /// The initrd's content with everything under /etc, for ostree's overlay initrd
    /// (`rpm-ostree initramfs-etc`, `ostree admin deploy --overlay-initrd`): the loader and the
    /// store in /etc/kmod-day1/initrd, its unit kmod-day1-load-initrd.service in
    /// /etc/systemd/system; takes effect at the next boot of the new deployment.
    OverlayInitrd,
    /// The objects (YAML) that prepare every node of the pool before the MachineConfig:
    /// Namespace, ServiceAccount, SCC grant, ConfigMap and a DaemonSet running --node-image,
    /// which stays on as the node's agent serving its metrics (Service, ServiceMonitor,
    /// PrometheusRule for user-workload monitoring).
    Prestage,
    /// The MachineConfiguration/cluster node disruption policy (YAML for server-side apply) of
    /// the MachineConfig's files and units (--on-change).
    DisruptionPolicy,
    /// An ACM Policy, Placement and PlacementBinding (YAML for the hub) that put the prestage
    /// objects, then the MachineConfig once stored on every node, then (with --on-change) the
    /// disruption policy on the spokes of --cluster-selector.
    AcmPolicy,
}

/// How the node binaries reach the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeliveryArg {
    /// Inside the generated config, gzip-compressed (from --node-binaries).
    Embedded,
    /// In the OS image (see --output containerfile); the config carries units and config.
    Layered,
    /// From the node image (--node-image): an install unit copies them into /usr/local/bin
    /// with the node's podman once the network is up.
    Image,
}

const ABOUT: &str = "Generate the MachineConfig that swaps an in-tree kernel module for an \
out-of-tree one before the network comes up (kmod-day1)";

const LONG_ABOUT: &str = "\
Generate the MachineConfig that swaps an in-tree kernel module for an out-of-tree one \
before the network comes up (kmod-day1).

The input is either a spec file (-f: kmod-day1's own KmodDay1Config, or KMM's \
BootModuleConfig as it is) or KMM's day1-utility flags (--machine-config, \
--machine-config-pool, --image, --kernel-module, ...), with the same names and meaning.

The output (stdout, or --output-file written atomically) installs on every node of the pool: \
/etc/kmod-day1/config.d/<machine-config>.json, kmod-day1-load.service (before \
network-pre.target), kmod-day1-pull.service (after network-online.target) and the node \
binaries, by the delivery named. The MachineConfig's size is printed on stderr.

Deliveries: image (the default with --node-image): the MachineConfig pins the node image (`make \
node-image`) by digest and kmod-day1-install.service copies the binaries into /usr/local/bin \
with the node's podman once the network is up; layered: the binaries in the OS image, built \
with the Containerfile of --output containerfile; embedded (the default for --output ignition, \
at installer time): the binaries inside the config, too large for a MachineConfig. A \
MachineConfig needs --node-image or --delivery.

Around the MachineConfig: --output prestage writes the objects (Namespace, ServiceAccount, SCC \
grant, ConfigMap, DaemonSet) that install the binaries of --node-image and store the kmod images \
on every node of the pool first, so that MCO's drained reboot is the only one, then serve each \
node's kmod-day1 metrics (Service, ServiceMonitor, PrometheusRule alerting on a fallback to the \
in-tree driver); --output \
disruption-policy writes the MachineConfiguration/cluster entries for its files and units \
(--on-change reboot|next-boot), for `oc apply --server-side`; --output acm-policy puts all of it \
on the spokes of an ACM hub (--cluster-selector), the MachineConfig only once the prestage has \
stored the images on every node of the spoke's pool. --single-node targets the master pool.

Migration from KMM's Day 1: --from-kmm-machineconfig FILE reads a MachineConfig made by KMM's \
day1-utility or BootModuleConfig controller and writes the equivalent spec, headed by the list of \
KMM's units, scripts, mask and disruption-policy entries to remove.";

const AFTER_HELP: &str = "\
Examples:
  mcgen -f examples/e1000.yaml --node-image quay.io/acme/kmod-day1-node@sha256:<digest>
  mcgen --machine-config 99-worker-ice --machine-config-pool worker --delivery layered \\
        --image quay.io/acme/ice-kmod --kernel-module ice --in-tree-modules-to-remove ice
  mcgen -f spec.yaml -o prestage --node-image quay.io/acme/kmod-day1-node@sha256:<digest>
  mcgen -f spec.yaml -o disruption-policy --on-change next-boot --node-image <same>
  mcgen -f spec.yaml -o acm-policy --node-image <same> --cluster-selector du-profile=ran \\
        --remediation-action enforce --single-node
  mcgen --from-kmm-machineconfig kmm-mc.yaml > spec.yaml
  mcgen -f spec.yaml --output ignition --node-binaries target/x86_64-unknown-linux-gnu/release
  mcgen -f spec.yaml --output containerfile --base-image quay.io/openshift/rhcos:4.16

Exit status: 0 on success, 2 for invalid input (one line says which value and how to fix it), \
1 when a file cannot be read or written. Nothing is written on failure.";

/// mcgen's command line.
#[derive(Debug, Parser)]
#[command(name = "mcgen", version, max_term_width = 100, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
#[command(group(ArgGroup::new("kmm").multiple(true).args(["machine_config", "machine_config_pool", "image", "kernel_module", "in_tree_modules_to_remove", "firmware_files_path"]).conflicts_with("spec")))]
pub struct Cli {
    /// Spec file: a KmodDay1Config or a KMM BootModuleConfig (YAML); `-` reads stdin
    #[arg(short = 'f', long, value_name = "FILE")]
    pub spec: Option<PathBuf>,

    /// Name of the MachineConfig to create (KMM flag)
    #[arg(long, value_name = "NAME", help_heading = "KMM day1-utility flags")]
    pub machine_config: Option<String>,

    /// MachineConfigPool the MachineConfig is for (KMM flag)
    #[arg(long, value_name = "POOL", help_heading = "KMM day1-utility flags")]
    pub machine_config_pool: Option<String>,

    /// Kmod image; without a tag the node uses its kernel release as the tag (KMM flag)
    #[arg(long, value_name = "IMAGE", help_heading = "KMM day1-utility flags")]
    pub image: Option<String>,

    /// Out-of-tree kernel module to load (KMM flag)
    #[arg(long, value_name = "MODULE", help_heading = "KMM day1-utility flags")]
    pub kernel_module: Option<String>,

    /// In-tree modules to unload first, comma-separated (KMM flag)
    #[arg(
        long,
        value_name = "A,B",
        value_delimiter = ',',
        alias = "in-tree-module-to-remove",
        help_heading = "KMM day1-utility flags"
    )]
    pub in_tree_modules_to_remove: Vec<String>,

    /// Directory of firmware files inside the image, copied to /var/lib/firmware (KMM flag)
    #[arg(long, value_name = "PATH", help_heading = "KMM day1-utility flags")]
    pub firmware_files_path: Option<String>,

    /// Accepted for KMM compatibility and ignored: no worker image runs on the node
    #[arg(long, value_name = "IMAGE", help_heading = "KMM day1-utility flags")]
    pub worker_image: Option<String>,

    /// What to write
    #[arg(short = 'o', long, value_enum, default_value = "machineconfig")]
    pub output: OutputFormat,

    /// Ignition spec version of the generated config
    #[arg(long, value_enum, default_value = "3.2.0")]
    pub ignition_version: IgnitionVersion,

    /// How the node binaries reach the node [default: image with --node-image, else embedded
    /// for ignition and layered for containerfile; a MachineConfig needs one named]
    #[arg(long, value_enum)]
    pub delivery: Option<DeliveryArg>,

    /// The node image pinned by digest, REF@sha256:<digest> (`make node-image`); implies
    /// --delivery image
    #[arg(long, value_name = "REF@DIGEST")]
    pub node_image: Option<String>,

    /// Directory holding kmod-day1-load and kmod-day1-pull for --delivery embedded
    /// [default: the directory of the mcgen executable]
    #[arg(long, value_name = "DIR")]
    pub node_binaries: Option<PathBuf>,

    /// A store prepared by `kmod-day1-pull --kernel-release`: its refs and trees for this
    /// config go into the Ignition config, the MachineConfig or the initrd, so that the first
    /// boot loads the out-of-tree driver with no pull
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,

    /// With --bundle: carry only these kernels (repeat for several) [default: every kernel
    /// the store holds for the config]
    #[arg(long, value_name = "RELEASE", requires = "bundle")]
    pub kernel_release: Vec<kmod_day1_contract::KernelRelease>,

    /// With --output initrd or overlay-initrd: the static kmod-day1-load (`make static`)
    #[arg(long, value_name = "FILE")]
    pub loader: Option<PathBuf>,

    /// With --output initrd or overlay-initrd: the node's modprobe.d, carried as /etc/modprobe.d (*.conf,
    /// *.alias); nothing when it does not exist
    #[arg(
        long = "modprobe-d",
        value_name = "DIR",
        default_value = "/etc/modprobe.d"
    )]
    pub modprobe_d: PathBuf,

    /// Largest MachineConfig to emit, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: usize,

    /// With --output disruption-policy or acm-policy: what a later change of the MachineConfig
    /// costs a node
    #[arg(long, value_enum, value_name = "WHEN")]
    pub on_change: Option<OnChange>,

    /// Nodes the prestage DaemonSet runs on, KEY=VALUE (repeat for several) [default:
    /// node-role.kubernetes.io/<pool>=]
    #[arg(long, value_name = "KEY=VALUE")]
    pub node_selector: Vec<String>,

    /// With --output prestage or acm-policy: the port of the metrics each node's agent serves
    /// on the node's address (host network) [default: 9750]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub metrics_port: Option<u16>,

    /// A single-node spoke or cluster: the MachineConfig and the prestage go to the `master`
    /// pool, its only pool, whatever the spec says
    #[arg(long)]
    pub single_node: bool,

    /// With --output acm-policy: ManagedCluster labels of the spokes, KEY=VALUE (repeat; all
    /// must match)
    #[arg(long, value_name = "KEY=VALUE")]
    pub cluster_selector: Vec<String>,

    /// With --output acm-policy: what the templates that write objects do [default: inform]
    #[arg(long, value_enum, value_name = "ACTION")]
    pub remediation_action: Option<Remediation>,

    /// With --output acm-policy: the hub namespace of the Policy, Placement and
    /// PlacementBinding (bound to a ManagedClusterSet)
    #[arg(long, value_name = "NS", default_value = "kmod-day1")]
    pub policy_namespace: String,

    /// Migrate: read a MachineConfig made by KMM (day1-utility or BootModuleConfig) and write
    /// the equivalent kmod-day1 spec, headed by what to remove
    #[arg(long, value_name = "FILE", conflicts_with_all = ["spec", "kmm", "output", "single_node"])]
    pub from_kmm_machineconfig: Option<PathBuf>,

    /// OS image the Containerfile layers onto (else it takes --build-arg BASE_IMAGE)
    #[arg(long, value_name = "IMAGE")]
    pub base_image: Option<String>,

    /// Write the output to this file (atomically) instead of stdout
    #[arg(long, value_name = "PATH")]
    pub output_file: Option<PathBuf>,
}

fn read_spec(path: &Path) -> Result<String, Error> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Error::io("reading the spec from stdin", e))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid(format!("spec file {} does not exist", path.display()))
        } else {
            Error::io(format!("reading spec {}", path.display()), e)
        }
    })
}

impl Cli {
    pub(crate) fn config(&self) -> Result<(Day1Config, Vec<String>), Error> {
        let (config, warnings) = self.config_as_given()?;
        Ok(crate::acm_policy::single_node(
            config,
            warnings,
            self.single_node,
        ))
    }

    fn config_as_given(&self) -> Result<(Day1Config, Vec<String>), Error> {
        Ok(match &self.spec {
            Some(path) => parse_spec(&read_spec(path)?, &path.display().to_string())?,
            None => {
                let missing: Vec<&str> = [
                    ("--machine-config", &self.machine_config),
                    ("--machine-config-pool", &self.machine_config_pool),
                    ("--image", &self.image),
                    ("--kernel-module", &self.kernel_module),
                ]
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(f, _)| *f)
                .collect();
                if !missing.is_empty() {
                    return Err(Error::Invalid(format!(
                        "missing {}: give a spec with -f FILE or all of --machine-config, --machine-config-pool, --image and --kernel-module",
                        missing.join(", ")
                    )));
                }
                KmmArgs {
                    machine_config: self.machine_config.clone().unwrap_or_default(),
                    machine_config_pool: self.machine_config_pool.clone().unwrap_or_default(),
                    image: self.image.clone().unwrap_or_default(),
                    kernel_module: self.kernel_module.clone().unwrap_or_default(),
                    in_tree_modules_to_remove: self.in_tree_modules_to_remove.clone(),
                    firmware_files_path: self.firmware_files_path.clone(),
                    worker_image: self.worker_image.clone(),
                }
                .into_config()?
            }
        })
    }

    pub(crate) fn generator(&self) -> Result<(Generator, Vec<String>), Error> {
        let (config, warnings) = self.config()?;
        let delivery = self.delivery()?;
        if self.output == OutputFormat::Containerfile && delivery != Delivery::Layered {
            return Err(Error::Invalid(
                "--output containerfile goes with --delivery layered: the Containerfile is how the binaries reach the node".into(),
            ));
        }
        let generator = Generator::new(config)
            .delivery(delivery)
            .ignition_version(self.ignition_version)
            .max_bytes(self.max_bytes);
        Ok((self.with_bundle(generator)?, warnings))
    }

    /// How the node binaries reach the node: the flags, or the default for the output.
    fn delivery(&self) -> Result<Delivery, Error> {
        let node_image = self
            .node_image
            .as_deref()
            .map(NodeImage::parse)
            .transpose()?;
        let chosen = match (self.delivery, &node_image) {
            (Some(d), _) => d,
            (None, Some(_)) => DeliveryArg::Image,
            (None, None) => match self.output {
                OutputFormat::Ignition => DeliveryArg::Embedded,
                OutputFormat::Containerfile => DeliveryArg::Layered,
                // Not rendered by a generator (install_time.rs).
                OutputFormat::NodeConfig | OutputFormat::Initrd | OutputFormat::OverlayInitrd => {
                    DeliveryArg::Layered
                }
                OutputFormat::Machineconfig
                | OutputFormat::Prestage
                | OutputFormat::DisruptionPolicy
                | OutputFormat::AcmPolicy => {
                    return Err(Error::Invalid(
                        "say how the node binaries reach the nodes: --node-image REF@sha256:<digest> (the node image of `make node-image`, installed with the node's podman), --delivery layered (in the OS image, built with --output containerfile) or --delivery embedded (inside the MachineConfig, when it stays under --max-bytes)".into(),
                    ))
                }
            },
        };
        Ok(match (chosen, node_image) {
            (DeliveryArg::Image, Some(node_image)) => Delivery::Image { node_image },
            (DeliveryArg::Image, None) => {
                return Err(Error::Invalid(
                    "--delivery image needs --node-image REF@sha256:<digest> (`make node-image` prints the digest)".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(Error::Invalid(
                    "--node-image goes with --delivery image (its default): drop --delivery or --node-image".into(),
                ))
            }
            (DeliveryArg::Layered, None) => Delivery::Layered,
            (DeliveryArg::Embedded, None) => Delivery::Embedded {
                node_binaries: match &self.node_binaries {
                    Some(d) => d.clone(),
                    None => default_node_binaries()?,
                },
            },
        })
    }

    /// Renders the requested output; `notes` receives lines for stderr.
    pub fn render(&self, notes: &mut Vec<String>) -> Result<String, Error> {
        if let Some(path) = &self.from_kmm_machineconfig {
            return crate::kmm_migration::migrate_file(path, notes);
        }
        if let Some(text) = self.render_install_time()? {
            return Ok(text);
        }
        if let Some(b) = &self.base_image {
            kmod_day1_contract::ImageRef::parse(b)
                .map_err(|e| Error::Invalid(format!("--base-image: {e}")))?;
        }
        if self.output != OutputFormat::AcmPolicy
            && (!self.cluster_selector.is_empty() || self.remediation_action.is_some())
        {
            return Err(Error::Invalid(
                "--cluster-selector and --remediation-action go with --output acm-policy".into(),
            ));
        }
        if self.output == OutputFormat::AcmPolicy {
            return self.acm_policy(notes);
        }
        if self.output == OutputFormat::Prestage {
            return self.prestage(notes);
        }
        if !self.node_selector.is_empty() {
            return Err(Error::Invalid(
                "--node-selector goes with --output prestage".into(),
            ));
        }
        if self.metrics_port.is_some() {
            return Err(Error::Invalid(
                "--metrics-port goes with --output prestage or acm-policy".into(),
            ));
        }
        if self.on_change.is_some() != (self.output == OutputFormat::DisruptionPolicy) {
            return Err(Error::Invalid(
                "--output disruption-policy and --on-change reboot|next-boot go together".into(),
            ));
        }
        let (generator, warnings) = self.generator()?;
        notes.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
        match self.output {
            OutputFormat::Machineconfig => {
                let yaml = generator.machine_config_yaml()?;
                notes.push(format!(
                    "MachineConfig {} for pool {}: {} bytes (limit {})",
                    generator.config().name,
                    generator.config().pool.as_str(),
                    yaml.len(),
                    self.max_bytes
                ));
                Ok(yaml)
            }
            OutputFormat::Ignition => {
                let json = generator.ignition_json()?;
                notes.push(format!(
                    "Ignition {} config {}: {} bytes",
                    self.ignition_version.as_str(),
                    generator.config().name,
                    json.len()
                ));
                Ok(json)
            }
            OutputFormat::Containerfile => Ok(containerfile(self.base_image.as_deref())),
            OutputFormat::NodeConfig | OutputFormat::Initrd | OutputFormat::OverlayInitrd => {
                unreachable!("rendered above")
            }
            OutputFormat::Prestage | OutputFormat::AcmPolicy => unreachable!("rendered above"),
            OutputFormat::DisruptionPolicy => {
                let on_change = self.on_change.expect("checked above");
                let (yaml, n) =
                    disruption_policy_yaml(generator.config(), &generator.ignition()?, on_change)?;
                notes.push(format!(
                    "disruption policy of MachineConfig {}: adds {} file and {} unit entries (the cluster holds at most {MAX_ENTRIES} of each, for every owner together); apply with `oc apply --server-side --field-manager={} -f`",
                    generator.config().name,
                    n.files,
                    n.units,
                    field_manager(generator.config())
                ));
                Ok(yaml)
            }
        }
    }

    fn prestage(&self, notes: &mut Vec<String>) -> Result<String, Error> {
        let (config, warnings) = self.config()?;
        notes.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
        let Some(node_image) = self.node_image.as_deref() else {
            return Err(Error::Invalid(
                "--output prestage runs the node image on every node of the pool: give --node-image REF@sha256:<digest> (`make node-image` prints the digest)".into(),
            ));
        };
        let node_image = NodeImage::parse(node_image)?;
        let selector = if self.node_selector.is_empty() {
            NodeSelector::for_pool(config.pool.as_str())
        } else {
            NodeSelector::parse(&self.node_selector)?
        };
        let yaml = prestage_yaml(&config, &node_image, &selector, self.metrics_port())?;
        notes.push(format!(
            "prestage of {} for pool {}: `oc apply -f` it, wait for `oc -n {NAMESPACE} rollout status daemonset/kmod-day1-{}` (ready = stored), then apply the MachineConfig",
            config.name,
            config.pool.as_str(),
            config.name
        ));
        Ok(yaml)
    }
}

impl Cli {
    fn metrics_port(&self) -> u16 {
        self.metrics_port.unwrap_or(crate::prestage::METRICS_PORT)
    }

    fn acm_policy(&self, notes: &mut Vec<String>) -> Result<String, Error> {
        if self.node_image.is_none() {
            return Err(Error::Invalid(
                "--output acm-policy carries the prestage, which runs the node image on every node: give --node-image REF@sha256:<digest> (`make node-image` prints the digest)".into(),
            ));
        }
        if self.cluster_selector.is_empty() {
            return Err(Error::Invalid(
                "--output acm-policy needs --cluster-selector KEY=VALUE (the ManagedCluster labels of the spokes): a Placement without one takes every cluster of the bound cluster sets".into(),
            ));
        }
        let cluster_selector = NodeSelector::parse(&self.cluster_selector).map_err(|e| {
            Error::Invalid(
                e.to_string()
                    .replace("--node-selector", "--cluster-selector"),
            )
        })?;
        let (generator, warnings) = self.generator()?;
        notes.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
        let config = generator.config();
        let Delivery::Image { node_image } = &generator.delivery else {
            return Err(Error::Invalid(
                "--output acm-policy goes with the image delivery (--node-image, no --delivery): the prestage installs the binaries of that image".into(),
            ));
        };
        let selector = if self.node_selector.is_empty() {
            NodeSelector::for_pool(config.pool.as_str())
        } else {
            NodeSelector::parse(&self.node_selector)?
        };
        let ignition = generator.ignition()?;
        // The size check of the MachineConfig on its own.
        generator.machine_config_yaml()?;
        let machine_config = serde_json::to_value(crate::MachineConfig::new(
            config.name.as_str(),
            config.pool.as_str(),
            ignition.clone(),
        ))
        .expect("JSON serializes");
        let disruption_policy = match self.on_change {
            Some(on_change) => Some(crate::disruption_policy(&ignition, on_change)?.0),
            None => None,
        };
        let content = crate::PolicyContent {
            prestage: crate::prestage_objects(config, node_image, &selector, self.metrics_port())?,
            machine_config,
            disruption_policy,
        };
        let options = crate::AcmPolicyOptions {
            namespace: self.policy_namespace.clone(),
            remediation: self.remediation_action.unwrap_or(Remediation::Inform),
            cluster_selector,
        };
        let names = crate::PolicyNames::new(config, &options.namespace)?;
        let yaml = crate::acm_policy_yaml(config, content, &options)?;
        if yaml.len() > self.max_bytes {
            return Err(Error::TooLarge(format!(
                "the ACM policy of {} would be {} bytes, above the {}-byte limit (--max-bytes): the hub stores it and a copy per spoke in etcd",
                config.name,
                yaml.len(),
                self.max_bytes
            )));
        }
        notes.push(format!(
            "ACM policy {}/{} for pool {} (replicated as {}, {} of {} characters): {} bytes (limit {}); `oc apply -f` it on the hub, in a namespace bound to a ManagedClusterSet",
            options.namespace,
            names.policy,
            config.pool.as_str(),
            names.replicated,
            names.replicated.len(),
            crate::acm_policy::MAX_REPLICATED_NAME,
            yaml.len(),
            self.max_bytes
        ));
        Ok(yaml)
    }
}

fn default_node_binaries() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the mcgen executable", e))?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Runs mcgen with `args`; returns the exit code. Errors are one line on stderr.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let mut notes = vec![];
    let result = cli
        .render_bytes(&mut notes)
        .and_then(|out| match &cli.output_file {
            Some(path) => kmod_day1_contract::write_atomic(path, &out)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e)),
            None => std::io::stdout()
                .write_all(&out)
                .map_err(|e| Error::io("writing to stdout", e)),
        });
    for n in notes {
        eprintln!("mcgen: {n}");
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mcgen: error: {e}");
            e.exit_code()
        }
    }
}
