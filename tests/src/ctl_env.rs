//! A berth instance for end-to-end tests of berthctl commands that mount things on the client
//! side (build, cp, commit...): its own bridge, nft table and cgroup parent, the busybox image
//! loaded as `busybox`, and berthctl's temporary directory inside the instance, so that the
//! harness's leak check also sees the client's mounts.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

use crate::cleanup::{clean_up_instance, stop_instance};
use crate::fixtures::images;
use crate::{Berth, Mode, Options};

/// A running instance; dropping it without [`CtlEnv::stop`] cleans up forcibly.
pub struct CtlEnv {
    berth: Option<Berth>,
    /// Random hex that names this instance's host objects.
    pub tag: String,
    letter: char,
    dir: tempfile::TempDir,
}

impl CtlEnv {
    /// Starts an all-in-one berth whose links and tables are named `berth-<letter><tag>...`.
    pub fn start(letter: char) -> Result<CtlEnv> {
        let tag = format!("{:06x}", crate::harness::rand_u32() & 0xff_ffff);
        let config = format!(
            "[network]\ndefault_bridge = \"berth-{letter}{tag}0\"\nnft_table = \"berth_{letter}{tag}\"\n\
             [tasks]\ncgroup_parent = \"berth-test-{tag}\"\n"
        );
        let berth = Berth::start_with(
            Mode::AllInOne,
            Options {
                config: Some(config),
                ..Default::default()
            },
        )?;
        let dir = tempfile::Builder::new()
            .prefix("berth-ctl-test-")
            .tempdir()?;
        let env = CtlEnv {
            berth: Some(berth),
            tag,
            letter,
            dir,
        };
        let layout = env.path("layout");
        images::busybox_layout(&layout)?;
        env.ok(&["load", layout.to_str().context("utf-8")?])?;
        std::fs::create_dir(env.berth().root().join("tmp"))?;
        Ok(env)
    }

    /// The instance.
    pub fn berth(&self) -> &Berth {
        self.berth.as_ref().expect("berth running")
    }

    /// A berthctl command for the instance, with its temporary directory inside it.
    pub fn command(&self) -> Command {
        let mut command = self.berth().ctl();
        command.env("TMPDIR", self.berth().root().join("tmp"));
        command
    }

    /// The output of berthctl `args`, whatever its status.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Ok(self.command().args(args).output()?)
    }

    /// berthctl `args`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        ensure!(
            out.status.success(),
            "berthctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// berthctl `args`, which must fail with status 1; its stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.code() == Some(1),
            "berthctl {args:?} should have failed with 1 ({}): {err}",
            out.status
        );
        Ok(err)
    }

    /// `name` in the test's own temporary directory (outside the instance).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Removes every container, stops the instance and checks that nothing leaked.
    pub fn stop(mut self) -> Result<()> {
        for id in self.ok(&["ps", "-aq", "--no-trunc"])?.lines() {
            self.ok(&["rm", "-f", id])?;
        }
        let berth = self.berth.take().expect("berth running");
        stop_instance(berth, &format!("berth-test-{}", self.tag))
    }
}

impl Drop for CtlEnv {
    fn drop(&mut self) {
        if let Some(berth) = self.berth.take() {
            let (letter, tag) = (self.letter, &self.tag);
            clean_up_instance(
                berth,
                &format!("berth-test-{tag}"),
                Some((
                    &format!("berth-{letter}{tag}"),
                    &format!("berth_{letter}{tag}"),
                )),
            );
        }
    }
}
