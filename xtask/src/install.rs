//! Installing the programs the test suite needs, skipping those already present.
//!
//! The requirements are a table ([`REQUIREMENTS`]): each entry names a program,
//! says how to tell whether it is present and how to install it. To add a
//! requirement, add a row.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::util::{self, Result};

/// The tansu version the tests are written against.
pub const TANSU_VERSION: &str = "0.6.0";

/// One program the test suite needs.
pub struct Requirement {
    /// The name printed in the progress lines.
    pub name: &'static str,
    /// How to tell whether it is already installed.
    pub check: Check,
    /// How to install it when it is missing.
    pub install: Install,
    /// An optional remark printed when installing, such as how long it takes.
    pub note: Option<&'static str>,
}

/// How to tell whether a requirement is present.
pub enum Check {
    /// The command (program and arguments) runs and exits successfully.
    Succeeds(&'static [&'static str]),
    /// A file exists at this path.
    FileExists(&'static str),
    /// An executable with this name is on the `PATH`.
    OnPath(&'static str),
    /// A custom test.
    Custom(fn() -> bool),
}

/// How to install a missing requirement.
pub enum Install {
    /// `cargo install` with these arguments.
    Cargo(&'static [&'static str]),
    /// `apt-get install -y` of these Debian packages.
    Apt(&'static [&'static str]),
    /// `python3 -m pip install` of these Python packages.
    Pip(&'static [&'static str]),
}

/// Everything `cargo xtask test` needs, checked and installed in this order.
pub const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        name: "cargo-nextest",
        check: Check::Custom(nextest_present),
        install: Install::Cargo(&["cargo-nextest", "--locked"]),
        note: Some("this takes a few minutes"),
    },
    Requirement {
        name: "tansu 0.6.0",
        check: Check::Custom(tansu_present),
        install: Install::Cargo(&["tansu", "--locked", "--version", TANSU_VERSION, "--features", "dynostore,libsql"]),
        note: Some("this takes about 11 minutes on 2 cores"),
    },
    Requirement { name: "postgresql", check: Check::Custom(postgres_present), install: Install::Apt(&["postgresql"]), note: None },
    Requirement {
        name: "clickhouse",
        check: Check::OnPath("clickhouse-server"),
        install: Install::Apt(&["clickhouse-server", "clickhouse-client"]),
        note: None,
    },
    Requirement {
        name: "aiosmtpd",
        check: Check::Succeeds(&["python3", "-c", "import aiosmtpd"]),
        install: Install::Pip(&["aiosmtpd"]),
        note: None,
    },
    Requirement {
        // An independent JOSE implementation: verifies the Open Badges credentials' signatures.
        name: "joserfc",
        check: Check::Succeeds(&["python3", "-c", "import joserfc"]),
        install: Install::Pip(&["joserfc"]),
        note: None,
    },
    Requirement {
        name: "schemathesis",
        check: Check::Succeeds(&["python3", "-c", "import schemathesis"]),
        install: Install::Pip(&["schemathesis"]),
        note: None,
    },
    Requirement {
        name: "kubernetes-validate",
        check: Check::OnPath("kubernetes-validate"),
        install: Install::Pip(&["kubernetes-validate"]),
        note: Some("validates deploy/k8s/ against the Kubernetes schemas it ships (tests/it/ops_k8s.rs)"),
    },
    Requirement {
        name: "promtool",
        check: Check::OnPath("promtool"),
        install: Install::Apt(&["prometheus"]),
        note: Some("checks dashboards/prometheus/alerts.yml"),
    },
    Requirement {
        name: "docker-compose",
        check: Check::OnPath("docker-compose"),
        install: Install::Apt(&["docker-compose"]),
        note: Some("`docker-compose config` validates docker-compose.yml (tests/it/compose.rs)"),
    },
    Requirement {
        name: "stunnel4",
        check: Check::OnPath("stunnel4"),
        install: Install::Apt(&["stunnel4"]),
        note: Some("a TLS terminator in front of tansu and ClickHouse (tests/it/tls_*.rs)"),
    },
    Requirement { name: "chromium", check: Check::FileExists("/usr/bin/chromium"), install: Install::Apt(&["chromium"]), note: None },
];

/// What `cargo xtask fuzz` needs besides the nightly toolchain.
pub const FUZZ_REQUIREMENTS: &[Requirement] = &[Requirement {
    name: "cargo-fuzz",
    check: Check::Succeeds(&["cargo", "fuzz", "--version"]),
    install: Install::Cargo(&["cargo-fuzz", "--locked"]),
    note: Some("this takes about a minute"),
}];

/// Checks every requirement of the test suite and installs the missing ones, printing one
/// line per item.
pub fn ensure_all() -> Result<()> {
    ensure(REQUIREMENTS)
}

/// Checks `requirements` and installs the missing ones, printing one line per item.
pub fn ensure(requirements: &[Requirement]) -> Result<()> {
    let mut apt = Apt::default();
    for requirement in requirements {
        if requirement.check.passes() {
            println!("{}: present", requirement.name);
            continue;
        }
        let note = requirement.note.map_or_else(String::new, |note| format!("; {note}"));
        println!("{}: installing with `{}`{note}", requirement.name, requirement.install.describe());
        requirement.install.run(&mut apt)?;
        if !requirement.check.passes() {
            return Err(format!("{} is still missing after installing it", requirement.name));
        }
        println!("{}: installed", requirement.name);
    }
    Ok(())
}

impl Check {
    /// Whether the requirement is present.
    fn passes(&self) -> bool {
        match self {
            Self::Succeeds(command) => match command.split_first() {
                Some((program, args)) => util::succeeds(Command::new(program).args(args)),
                None => false,
            },
            Self::FileExists(path) => Path::new(path).exists(),
            Self::OnPath(name) => util::find_on_path(name).is_some(),
            Self::Custom(check) => check(),
        }
    }
}

impl Install {
    /// The command line shown to the user.
    fn describe(&self) -> String {
        match self {
            Self::Cargo(args) => format!("cargo install {}", args.join(" ")),
            Self::Apt(packages) => format!("apt-get install -y {}", packages.join(" ")),
            Self::Pip(packages) => format!("python3 -m pip install {}", packages.join(" ")),
        }
    }

    /// Installs the requirement.
    fn run(&self, apt: &mut Apt) -> Result<()> {
        match self {
            Self::Cargo(args) => util::run(Command::new(util::cargo()).arg("install").args(*args)),
            Self::Apt(packages) => apt.install(packages),
            Self::Pip(packages) => {
                let pip_works = util::succeeds(Command::new("python3").args(["-m", "pip", "--version"]));
                if !pip_works {
                    println!("pip: installing with `apt-get install -y python3-pip`");
                    apt.install(&["python3-pip"])?;
                }
                // Debian marks its Python as externally managed (PEP 668), which makes a
                // plain `pip install` refuse; the test machine is disposable, so allow it.
                util::run(
                    Command::new("python3")
                        .args(["-m", "pip", "install", "--disable-pip-version-check"])
                        .args(*packages)
                        .env("PIP_BREAK_SYSTEM_PACKAGES", "1"),
                )
            }
        }
    }
}

/// Runs `apt-get`, updating the package lists at most once per run and only
/// when something has to be installed.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, packages: &[&str]) -> Result<()> {
        if !self.updated {
            util::run(&mut privileged(&["apt-get", "update"])?)?;
            self.updated = true;
        }
        let mut args = vec!["apt-get", "install", "-y"];
        args.extend_from_slice(packages);
        util::run(&mut privileged(&args)?)
    }
}

/// A command that runs as root without prompting: directly when xtask is root,
/// else through `sudo`. `DEBIAN_FRONTEND` is passed through `env` because
/// `sudo` resets the environment.
fn privileged(args: &[&str]) -> Result<Command> {
    let mut command = if util::is_root() {
        Command::new("env")
    } else if util::find_on_path("sudo").is_some() {
        let mut sudo = Command::new("sudo");
        sudo.arg("env");
        sudo
    } else {
        return Err(format!("`{}` needs root, and xtask runs neither as root nor with sudo available", args.join(" ")));
    };
    command.arg("DEBIAN_FRONTEND=noninteractive").args(args);
    Ok(command)
}

/// Whether `cargo nextest` works.
fn nextest_present() -> bool {
    util::succeeds(Command::new(util::cargo()).args(["nextest", "--version"]))
}

/// Whether a tansu binary of the required version can be found.
fn tansu_present() -> bool {
    find_tansu().is_some()
}

/// Whether a PostgreSQL server installation can be found.
fn postgres_present() -> bool {
    postgres_bin_dir().is_some()
}

/// The first `tansu` binary that reports the required version, looked up on
/// the `PATH`, then in `$CARGO_HOME/bin` and `~/.cargo/bin`.
pub fn find_tansu() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = util::find_on_path("tansu").into_iter().collect();
    if let Some(cargo_home) = env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&cargo_home).join("bin/tansu"));
    }
    if let Some(home) = env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/tansu"));
    }
    candidates
        .into_iter()
        .filter(|candidate| util::is_executable(candidate))
        .find(|candidate| tansu_version_matches(candidate))
        .map(|found| fs::canonicalize(&found).unwrap_or(found))
}

/// Whether `<tansu> --version` reports [`TANSU_VERSION`].
fn tansu_version_matches(tansu: &Path) -> bool {
    Command::new(tansu).arg("--version").output().is_ok_and(|output| {
        output.status.success()
            && String::from_utf8_lossy(&output.stdout).split_whitespace().any(|word| word.trim_start_matches('v') == TANSU_VERSION)
    })
}

/// The `bin` directory of the newest PostgreSQL server installed by Debian's
/// packages, `/usr/lib/postgresql/<version>/bin`, if it has `initdb`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let entries = fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            util::is_executable(&bin.join("initdb")).then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}
