//! The Kubernetes examples against the API's own schemas, without a cluster:
//! `kubernetes-validate --strict` (the PyPI package, which ships the schemas and runs
//! offline) accepts every manifest in examples/kubernetes/, and refuses a field the API does
//! not know (so a pass means something). The app-only Deployment's tandem config is the
//! Compose split example's with the database's host name, so what tests/split.rs proves of
//! one holds for the other.
//!
//! The tool is taken from PATH, else installed with pip into a virtual environment under
//! target/ (no system-wide install).
//! Where neither it nor pip is to be had the tests print a skip line, unless `CI` is set:
//! there they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const TOP: &str = env!("CARGO_MANIFEST_DIR");
const TOOL: &str = "kubernetes-validate";
const PACKAGE: &str = "kubernetes-validate";

/// The manifests, each validated as a whole (every document in it).
fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(TOP).join("examples/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("app-only.yaml")),
        "no app-only.yaml in {}",
        dir.display()
    );
    files
}

#[test]
fn every_kubernetes_manifest_passes_strict_schema_validation() {
    let Some(tool) = validator() else {
        return;
    };
    for file in manifests() {
        let out = Command::new(&tool)
            .arg("--strict")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{TOOL} --strict {}: {}",
            file.display(),
            show(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let passed = text.matches(" passed for resource ").count();
        let documents = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("kind: "))
            .count();
        assert_eq!(
            passed,
            documents,
            "{}: not every resource was validated:\n{text}",
            file.display()
        );
    }
}

/// A misspelt field fails --strict validation: the check above is not a no-op.
#[test]
fn strict_validation_refuses_an_unknown_field() {
    let Some(tool) = validator() else {
        return;
    };
    let text = read("examples/kubernetes/app-only.yaml");
    let broken = text.replacen(
        "terminationGracePeriodSeconds:",
        "terminationGracePeriod:",
        1,
    );
    assert_ne!(broken, text);
    let path =
        std::env::temp_dir().join(format!("tandem-split-{}-broken.yaml", std::process::id()));
    std::fs::write(&path, broken).unwrap();
    let out = Command::new(&tool).arg("--strict").arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let out = out.unwrap();
    assert!(
        !out.status.success(),
        "{TOOL} --strict accepted an unknown field: {}",
        show(&out)
    );
    assert!(
        show(&out).contains("terminationGracePeriod"),
        "the failure does not name the field: {}",
        show(&out)
    );
}

/// The Deployment's pods run the same image in app-only mode: its config has no
/// [postgres], the database is external and probed, the password comes from a Secret,
/// startup and readiness are `tandem healthcheck`, liveness is not (a database restart
/// must not restart every API pod), and the grace period covers the stop budget.
#[test]
fn app_only_deployment_waits_for_its_external_database_and_probes_with_tandem() {
    let text = read("examples/kubernetes/app-only.yaml");
    for needle in [
        "kind: Deployment",
        "kind: ConfigMap",
        "type: ExternalName",
        "secretKeyRef:",
        "name: TANDEM_CONFIG",
    ] {
        assert!(text.contains(needle), "app-only.yaml has no {needle:?}");
    }
    let probe = |name: &str| -> String {
        let at = text
            .find(&format!("{name}:\n"))
            .unwrap_or_else(|| panic!("app-only.yaml has no {name}"));
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let indent = at - line_start;
        // The probe's own lines: those indented deeper than its key.
        text[at..]
            .lines()
            .skip(1)
            .take_while(|l| l.len() - l.trim_start().len() > indent)
            .collect::<Vec<_>>()
            .join("\n")
    };
    for name in ["startupProbe", "readinessProbe"] {
        assert!(
            probe(name).contains("path: /readyz"),
            "{name}: {}",
            probe(name)
        );
    }
    assert!(
        probe("livenessProbe").contains("path: /healthz"),
        "the liveness probe must not include the database (/readyz does): a database restart would restart every pod; {}",
        probe("livenessProbe")
    );
    let value_after = |key: &str| -> u64 {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("app-only.yaml has no {key}"));
        text[at + key.len()..]
            .lines()
            .next()
            .unwrap()
            .trim()
            .trim_matches('"')
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let grace = value_after("terminationGracePeriodSeconds:");
    let budget = value_after("name: TANDEM_STOP_TIMEOUT\n              value:");
    assert!(
        grace > budget && grace - budget <= 5,
        "terminationGracePeriodSeconds {grace} vs TANDEM_STOP_TIMEOUT {budget}"
    );

    // The config in the ConfigMap is the Compose example's, the database's host aside.
    let start = text
        .find("  tandem.toml: |\n")
        .expect("the ConfigMap's tandem.toml")
        + 17;
    let embedded: String = text[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let strip_comments = |t: &str| -> String {
        t.lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let compose =
        read("examples/compose/split/tandem-app.toml").replace("@db:5432", "@genie-db:5432");
    assert_eq!(
        strip_comments(&embedded),
        strip_comments(&compose),
        "the ConfigMap's tandem.toml drifted from examples/compose/split/tandem-app.toml"
    );
    assert!(
        !embedded.contains("[postgres]"),
        "an app-only config with [postgres]"
    );
}

/// The validator: on PATH, else in a virtual environment under target/, made and filled
/// with pip the first time (Debian's own python3 refuses a system-wide pip install).
fn validator() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        if works(Path::new(TOOL)) {
            return Ok(PathBuf::from(TOOL));
        }
        let venv = Path::new(TOP).join("target/kubernetes-validate");
        let tool = venv.join("bin").join(TOOL);
        if works(&tool) {
            return Ok(tool);
        }
        let run = |program: &Path, args: &[&str]| -> Result<(), String> {
            match Command::new(program).args(args).output() {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!("{} {args:?}: {}", program.display(), show(&o))),
                Err(e) => Err(format!("cannot run {}: {e}", program.display())),
            }
        };
        run(
            Path::new("python3"),
            &["-m", "venv", venv.to_str().unwrap()],
        )?;
        run(
            &venv.join("bin/python"),
            &["-m", "pip", "install", "--quiet", PACKAGE],
        )?;
        if works(&tool) {
            Ok(tool)
        } else {
            Err(format!(
                "{} does not run after pip installed {PACKAGE}",
                tool.display()
            ))
        }
    });
    match found {
        Ok(p) => Some(p.clone()),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but {TOOL} is not available: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {TOOL} is not available ({why})");
            None
        }
    }
}

fn works(tool: &Path) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn read(rel: &str) -> String {
    let path = Path::new(TOP).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}
