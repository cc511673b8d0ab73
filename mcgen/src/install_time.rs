// SPDX-License-Identifier: Apache-2.0
//! The install-time outputs of the command line: `--bundle` (a prepared store inside the
//! Ignition config or MachineConfig), `--output initrd`, `--output overlay-initrd` and
//! `--output node-config`.

use std::io::IsTerminal;

use clap::ValueEnum;

use crate::cli::{Cli, OutputFormat};
use crate::initramfs_content::Layout;
use crate::initrd::{initrd, InitrdInputs};
use crate::{Bundle, Day1Config, Error, Generator};

impl Cli {
    /// Renders the output as bytes: the initrd is binary, the others are text.
    pub fn render_bytes(&self, notes: &mut Vec<String>) -> Result<Vec<u8>, Error> {
        self.check_install_time_flags()?;
        if let Some(layout) = self.initrd_layout() {
            return self.initrd(layout, notes);
        }
        let text = self.render(notes)?;
        if let (Some(dir), OutputFormat::Machineconfig | OutputFormat::Ignition) =
            (&self.bundle, self.output)
        {
            let b = self.read_bundle(&self.config()?.0)?;
            notes.push(format!(
                "bundle {}: kernels {}, {} files and links, {} bytes of file contents (the output's size is above)",
                dir.display(),
                kernel_list(&b),
                b.entries().len(),
                b.file_bytes(),
            ));
        }
        Ok(text.into_bytes())
    }

    /// `--output node-config`; `None` for the other outputs.
    pub(crate) fn render_install_time(&self) -> Result<Option<String>, Error> {
        Ok(match self.output {
            OutputFormat::NodeConfig => Some(self.config_for_install_time()?.node.to_json()),
            OutputFormat::Initrd | OutputFormat::OverlayInitrd => {
                return Err(Error::Invalid(
                    "--output initrd and overlay-initrd are binary: mcgen::Cli::render_bytes writes them".into(),
                ))
            }
            _ => None,
        })
    }

    /// `generator` carrying the `--bundle` store, when given.
    pub(crate) fn with_bundle(&self, generator: Generator) -> Result<Generator, Error> {
        Ok(match &self.bundle {
            Some(_) => {
                let b = self.read_bundle(generator.config())?;
                generator.bundle(b)
            }
            None => generator,
        })
    }

    fn read_bundle(&self, config: &Day1Config) -> Result<Bundle, Error> {
        let dir = self.bundle.as_ref().expect("called with --bundle");
        Bundle::read(dir, config, &self.kernel_release)
    }

    /// The layout of an initrd output; `None` for the other outputs.
    fn initrd_layout(&self) -> Option<Layout> {
        match self.output {
            OutputFormat::Initrd => Some(Layout::RealRoot),
            OutputFormat::OverlayInitrd => Some(Layout::EtcOverlay),
            _ => None,
        }
    }

    fn check_install_time_flags(&self) -> Result<(), Error> {
        let initrd = self.initrd_layout().is_some();
        if self.loader.is_some() && !initrd {
            return Err(Error::Invalid(
                "--loader goes with --output initrd or overlay-initrd".into(),
            ));
        }
        if self.bundle.is_some()
            && !initrd
            && !matches!(
                self.output,
                OutputFormat::Machineconfig | OutputFormat::Ignition
            )
        {
            return Err(Error::Invalid(
                "--bundle goes with --output machineconfig, ignition, initrd or overlay-initrd"
                    .into(),
            ));
        }
        if initrd {
            let name = self.output.to_possible_value().expect("not skipped");
            let name = name.get_name();
            if self.bundle.is_none() || self.loader.is_none() {
                return Err(Error::Invalid(format!(
                    "--output {name} needs --bundle DIR (a store prepared by `kmod-day1-pull --kernel-release`) and --loader FILE (the static kmod-day1-load of `make static`)",
                )));
            }
            if self.output_file.is_none() && std::io::stdout().is_terminal() {
                return Err(Error::Invalid(format!(
                    "--output {name} is a binary archive: give --output-file FILE or redirect stdout",
                )));
            }
        }
        Ok(())
    }

    fn config_for_install_time(&self) -> Result<Day1Config, Error> {
        Ok(self.config()?.0)
    }

    fn initrd(&self, layout: Layout, notes: &mut Vec<String>) -> Result<Vec<u8>, Error> {
        let config = self.config_for_install_time()?;
        let bundle = self.read_bundle(&config)?;
        let mtime = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let out = initrd(&InitrdInputs {
            config: &config,
            bundle: &bundle,
            loader: self.loader.as_deref().expect("checked"),
            modprobe_d: &self.modprobe_d,
            mtime,
            layout,
        })?;
        let how = match layout {
            Layout::RealRoot => "append it to the node's initramfs (`cat initramfs.img kmod-day1.img > new.img`) or add it as a second initrd of the boot entry",
            Layout::EtcOverlay => "on an ostree node `ostree admin deploy --overlay-initrd=FILE --os=OS <the booted commit>`, on RHCOS `rpm-ostree initramfs-etc --track` of its files (docs/mcgen.md); either makes a new deployment: it takes effect at the next reboot",
        };
        notes.push(format!(
            "{} of {}: {} bytes gzip ({} bytes cpio), kernels {}, modprobe.d files {}; {how}",
            if layout == Layout::RealRoot {
                "initrd"
            } else {
                "overlay initrd"
            },
            config.name,
            out.bytes.len(),
            out.cpio_bytes,
            kernel_list(&bundle),
            if out.modprobe_files.is_empty() {
                "none".to_owned()
            } else {
                out.modprobe_files.join(", ")
            }
        ));
        Ok(out.bytes)
    }
}

fn kernel_list(b: &Bundle) -> String {
    b.kernels()
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
