//! The deployment files agree with the images and with tandem's contract, without Docker:
//! Dockerfile.genie and Dockerfile.agent differ only in names, port and database; every health
//! probe is `tandem healthcheck` (Compose) or tandem's HTTP endpoint (Kubernetes); every grace
//! period leaves TANDEM_STOP_TIMEOUT its margin; the ports match the images'.
//!
//! The compose and Kubernetes files are read with the small YAML reader at the end of this
//! file (block mappings and sequences, flow sequences of scalars, quoted and plain scalars):
//! the examples keep to that subset, and the reader fails loudly on anything else.

use std::collections::BTreeMap;
use std::path::Path;

const TOP: &str = env!("CARGO_MANIFEST_DIR");
const FLAVORS: [&str; 2] = ["genie", "agent"];
/// Docker's default `docker stop` grace period, which the images' own budget must fit.
const DOCKER_STOP_GRACE_S: u64 = 10;
/// An orchestrator's grace period must exceed TANDEM_STOP_TIMEOUT by at least this (tandem's
/// exit and the runtime's bookkeeping) and at most the upper bound (no pointless waiting).
const MARGIN_S: std::ops::RangeInclusive<u64> = 1..=5;
const PGDATA_MOUNT: &str = "/var/lib/postgresql/data";
const HEALTHCHECK: [&str; 2] = ["tandem", "healthcheck"];

fn read(rel: &str) -> String {
    let path = Path::new(TOP).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles

#[test]
fn dockerfiles_differ_only_in_names_ports_and_database() {
    let normalise = |flavor: &str| {
        let port = Dockerfile::load(flavor).port().to_string();
        read(&format!("Dockerfile.{flavor}"))
            .replace(&port, "{port}")
            .replace("genie", "{flavor}")
            .replace("agent", "{flavor}")
    };
    let (genie, agent) = (normalise("genie"), normalise("agent"));
    for (n, (g, a)) in genie.lines().zip(agent.lines()).enumerate() {
        assert_eq!(
            g,
            a,
            "Dockerfile.genie and Dockerfile.agent drift apart at line {}",
            n + 1
        );
    }
    assert_eq!(
        genie.lines().count(),
        agent.lines().count(),
        "the Dockerfiles differ in length"
    );
}

#[test]
fn dockerfiles_run_the_app_under_tandem_with_its_health_check() {
    for flavor in FLAVORS {
        let d = Dockerfile::load(flavor);
        let port = d.port();
        assert_eq!(d.json("ENTRYPOINT"), ["tandem"], "{flavor}");
        assert_eq!(d.one("STOPSIGNAL"), "SIGTERM", "{flavor}");
        let health = d.one("HEALTHCHECK");
        let (_, cmd) = health
            .split_once(" CMD ")
            .expect("HEALTHCHECK ... CMD [...]");
        assert_eq!(
            serde_json::from_str::<Vec<String>>(cmd).unwrap(),
            HEALTHCHECK,
            "{flavor}"
        );
        assert!(
            d.one("VOLUME").contains(PGDATA_MOUNT),
            "{flavor}: PGDATA is not a volume"
        );

        let cmd = d.json("CMD");
        let at = cmd
            .iter()
            .position(|a| a == "--port")
            .expect("CMD has --port");
        assert_eq!(
            cmd[at + 1],
            port.to_string(),
            "{flavor}: CMD port vs EXPOSE"
        );
        let env = d.env();
        assert_eq!(env["POSTGRES_DB"], format!("hive_{flavor}"));
        assert_eq!(env["TANDEM_APP_USER"], "hive");
        assert!(
            // 127.0.0.2: a probe can never connect to itself (the Dockerfiles say why).
            env["TANDEM_APP_HEALTH_URL"].starts_with(&format!("http://127.0.0.2:{port}/")),
            "{flavor}: the health URL is not the app's port"
        );
        assert!(
            !env.contains_key("POSTGRES_PASSWORD"),
            "{flavor}: a password baked into the image"
        );
        let budget = seconds(&env["TANDEM_STOP_TIMEOUT"]);
        assert!(
            budget < DOCKER_STOP_GRACE_S,
            "{flavor}: TANDEM_STOP_TIMEOUT {budget}s does not fit docker stop's 10 s"
        );
    }
}

/// The Hive server as the images run it: its own start command, its settings, its database
/// URL from tandem (never from the image), its pins in the repository.
#[test]
fn dockerfiles_run_the_hive_server_with_its_url_from_tandem() {
    for flavor in FLAVORS {
        let d = Dockerfile::load(flavor);
        let port = d.port().to_string();
        assert_eq!(
            d.json("CMD"),
            [
                "uvicorn",
                "api.serve:app",
                "--factory",
                "--host",
                "0.0.0.0",
                "--port",
                &port
            ],
            "{flavor}"
        );
        assert_eq!(d.arg("APP"), Some("hive"), "{flavor}: the default APP");
        let base = d.arg("BASE_IMAGE").expect("ARG BASE_IMAGE=...");
        assert!(
            base.starts_with("pgvector/pgvector:pg17-trixie"),
            "{flavor}: BASE_IMAGE {base}: PostgreSQL 17, pgvector, Debian 13 for Python 3.12+"
        );

        let env = d.env();
        let aliases: Vec<&str> = env["TANDEM_DATABASE_URL_AS"].split(',').collect();
        assert!(
            aliases.contains(&"HIVE_DATABASE_URL=postgresql+psycopg"),
            "{flavor}: TANDEM_DATABASE_URL_AS {aliases:?}"
        );
        assert_eq!(env["HIVE_API_PORT"], port, "{flavor}");
        assert_eq!(env["HIVE_ENVIRONMENT"], "production", "{flavor}");
        assert_eq!(env["AGNO_TELEMETRY"], "false", "{flavor}");
        assert_eq!(env["HIVE_ENABLE_LANGWATCH"], "false", "{flavor}");
        for origin in env["HIVE_CORS_ORIGINS"].split(',') {
            assert!(
                origin.starts_with("http://") || origin.starts_with("https://"),
                "{flavor}: the server refuses CORS origin {origin:?}"
            );
        }
        for secret in [
            "HIVE_API_KEY",
            "HIVE_DATABASE_URL",
            "DATABASE_URL",
            "POSTGRES_PASSWORD",
        ] {
            assert!(
                !env.contains_key(secret),
                "{flavor}: {secret} baked into the image"
            );
        }
        assert!(
            env["PATH"].starts_with("/opt/hive/venv/bin:"),
            "{flavor}: the server's venv first on PATH"
        );

        let version = d.arg("HIVE_VERSION").expect("ARG HIVE_VERSION=...");
        let pins = read(&format!("images/hive/constraints-{version}.txt"));
        let pins: Vec<&str> = pins
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert!(pins.len() > 100, "{flavor}: {} pins", pins.len());
        for pin in &pins {
            let (name, v) = pin.split_once("==").unwrap_or_else(|| {
                panic!("constraints-{version}.txt: {pin:?} is not NAME==VERSION")
            });
            assert!(
                !name.is_empty() && !v.is_empty() && !v.contains(' '),
                "{pin:?}"
            );
        }
        assert!(
            pins.iter().any(|p| p.starts_with("mcp==1.")),
            "the pins keep mcp 1.x (agno 2.0.8 imports what mcp 2 removed)"
        );
    }
}

/// Every instruction that makes a layer (FROM, RUN, COPY, ADD) comes before the first one in
/// which genie and agent differ, so the second image reuses all of the first's layers, the
/// Hive server's pip layer included; and the supervisord twin's app stage is the same stage,
/// so it gets those layers too, as do bench/compare.sh's images (images/compare/).
#[test]
fn dockerfiles_share_every_layer_and_the_supervisord_twin_shares_the_app_stage() {
    let (genie, agent) = (Dockerfile::load("genie"), Dockerfile::load("agent"));
    let first_difference = genie
        .instructions
        .iter()
        .zip(&agent.instructions)
        .position(|(g, a)| g != a)
        .expect("Dockerfile.genie and Dockerfile.agent are identical");
    for (op, args) in &genie.instructions[first_difference..] {
        assert!(
            !["FROM", "RUN", "COPY", "ADD"].contains(&op.as_str()),
            "{op} {args} comes after the first difference between genie and agent"
        );
    }
    let twin = Dockerfile::read("images/supervisord/Dockerfile");
    assert_eq!(
        twin.stage("app"),
        genie.stage("app"),
        "images/supervisord/Dockerfile's app stage is not Dockerfile.genie's"
    );
    assert_eq!(twin.arg("BASE_IMAGE"), genie.arg("BASE_IMAGE"));
    assert_eq!(twin.arg("APP"), genie.arg("APP"));
    // bench/compare.sh's bare, tini and horust images: the same app stage too.
    let others = Dockerfile::read("images/compare/Dockerfile");
    assert_eq!(
        others.stage("app"),
        genie.stage("app"),
        "images/compare/Dockerfile's app stage is not Dockerfile.genie's"
    );
    assert_eq!(others.arg("BASE_IMAGE"), genie.arg("BASE_IMAGE"));
    assert_eq!(others.arg("APP"), genie.arg("APP"));
}

/// The instructions of a Dockerfile, continuation lines joined, comments dropped.
struct Dockerfile {
    name: String,
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    fn load(flavor: &str) -> Dockerfile {
        Dockerfile::read(&format!("Dockerfile.{flavor}"))
    }

    /// Any Dockerfile, by its path in the repository.
    fn read(name: &str) -> Dockerfile {
        let name = name.to_string();
        let mut instructions = vec![];
        let mut current = String::new();
        for line in read(&name).lines() {
            let line = line.trim();
            if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(part) => current.push_str(part),
                None => {
                    current.push_str(line);
                    let (op, args) = current
                        .split_once(char::is_whitespace)
                        .unwrap_or((&current, ""));
                    instructions.push((
                        op.to_uppercase(),
                        args.split_whitespace().collect::<Vec<_>>().join(" "),
                    ));
                    current.clear();
                }
            }
        }
        Dockerfile { name, instructions }
    }

    fn all(&self, op: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    /// The last instruction `op` (the one in effect in the final stage).
    fn one(&self, op: &str) -> &str {
        self.all(op)
            .last()
            .copied()
            .unwrap_or_else(|| panic!("{}: no {op}", self.name))
    }

    fn json(&self, op: &str) -> Vec<String> {
        serde_json::from_str(self.one(op))
            .unwrap_or_else(|e| panic!("{}: {op} is not a JSON array: {e}", self.name))
    }

    fn port(&self) -> u16 {
        self.one("EXPOSE")
            .parse()
            .unwrap_or_else(|e| panic!("{}: EXPOSE: {e}", self.name))
    }

    /// The default of `ARG name=default` (the first declaration).
    fn arg(&self, name: &str) -> Option<&str> {
        self.all("ARG").into_iter().find_map(|a| {
            let (k, v) = a.split_once('=')?;
            (k == name).then_some(v)
        })
    }

    /// The instructions of the stage `FROM ... AS name`, up to the next FROM.
    fn stage(&self, name: &str) -> &[(String, String)] {
        let suffix = format!(" AS {name}");
        let start = self
            .instructions
            .iter()
            .position(|(op, args)| op == "FROM" && args.ends_with(&suffix))
            .unwrap_or_else(|| panic!("{}: no stage {name}", self.name));
        let len = self.instructions[start + 1..]
            .iter()
            .position(|(op, _)| op == "FROM")
            .map_or(self.instructions.len() - start, |n| n + 1);
        &self.instructions[start..start + len]
    }

    /// Every `ENV K=V ...` (values without spaces, as these files write them).
    fn env(&self) -> BTreeMap<String, String> {
        self.all("ENV")
            .iter()
            .flat_map(|args| args.split_whitespace())
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{}: ENV {kv}: use K=V", self.name));
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Compose

#[test]
fn compose_examples_check_health_with_tandem_and_fit_the_stop_budget() {
    for flavor in FLAVORS {
        let file = format!("examples/compose/docker-compose-{flavor}.yml");
        let docs = parse_yaml(&read(&file));
        let service = docs[0].at(&format!("services.{flavor}-server"));
        let port = Dockerfile::load(flavor).port();

        let test = service.at("healthcheck.test").strs();
        assert_eq!(test, ["CMD", "tandem", "healthcheck"], "{file}");
        let budget = seconds(service.at("environment.TANDEM_STOP_TIMEOUT").str());
        let grace = seconds(service.at("stop_grace_period").str());
        assert!(
            MARGIN_S.contains(&(grace.saturating_sub(budget))) && grace > budget,
            "{file}: stop_grace_period {grace}s vs TANDEM_STOP_TIMEOUT {budget}s"
        );
        assert_eq!(
            service.at("environment.POSTGRES_DB").str(),
            format!("hive_{flavor}"),
            "{file}"
        );
        // Secrets come from the user's environment (or .env), never written in the file.
        for secret in ["POSTGRES_PASSWORD", "HIVE_API_KEY"] {
            let value = service.at(&format!("environment.{secret}")).str();
            assert!(
                value.starts_with(&format!("${{{secret}:?")),
                "{file}: {secret} is {value:?}, not required from the environment"
            );
        }

        let ports = service.at("ports").strs();
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "{file}: port {port} not published: {ports:?}"
        );
        let volumes = service.at("volumes").strs();
        assert!(
            volumes
                .iter()
                .any(|v| v.ends_with(&format!(":{PGDATA_MOUNT}"))),
            "{file}: no data volume: {volumes:?}"
        );
        for limit in ["mem_limit", "cpus"] {
            service.at(limit);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// The probes ask tandem's HTTP endpoint (`TANDEM_HTTP`), which the container exposes:
/// startup and readiness `/readyz` (the healthcheck's verdict), liveness `/healthz`; and the
/// pod carries the scrape annotations for that port.
fn check_http_probes(file: &str, template: &Yaml, c: &Yaml) {
    let env: BTreeMap<&str, &Yaml> = c
        .at("env")
        .seq()
        .iter()
        .map(|e| (e.at("name").str(), e))
        .collect();
    let listen = env
        .get("TANDEM_HTTP")
        .unwrap_or_else(|| panic!("{file}: no TANDEM_HTTP"))
        .at("value")
        .str();
    let port = listen.rsplit(':').next().unwrap();
    assert!(
        listen.starts_with("0.0.0.0:"),
        "{file}: the kubelet reaches {listen}?"
    );
    let named = c
        .at("ports")
        .seq()
        .iter()
        .find(|p| p.at("containerPort").str() == port)
        .unwrap_or_else(|| panic!("{file}: port {port} is not a containerPort"))
        .at("name")
        .str();
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let p = c.get(probe).unwrap_or_else(|| panic!("{file}: no {probe}"));
        assert_eq!(p.at("httpGet.path").str(), path, "{file}: {probe}");
        assert_eq!(p.at("httpGet.port").str(), named, "{file}: {probe}");
    }
    let notes = template
        .at("metadata")
        .get("annotations")
        .unwrap_or_else(|| {
            panic!("{file}: no pod annotations");
        });
    let note = |k: &str| notes.get(k).map(Yaml::str);
    assert_eq!(note("prometheus.io/scrape"), Some("true"), "{file}");
    assert_eq!(note("prometheus.io/port"), Some(port), "{file}");
    assert_eq!(note("prometheus.io/path"), Some("/metrics"), "{file}");
}

#[test]
fn kubernetes_manifests_probe_tandems_http_endpoint_and_fit_the_grace_period() {
    for flavor in FLAVORS {
        let file = format!("examples/kubernetes/{flavor}.yaml");
        let docs = parse_yaml(&read(&file));
        let kind = |k: &'static str| -> Vec<&Yaml> {
            docs.iter()
                .filter(|d| d.get("kind").map(Yaml::str) == Some(k))
                .collect()
        };
        let sts = kind("StatefulSet");
        assert_eq!(sts.len(), 1, "{file}: one StatefulSet");
        let sts = sts[0];
        let pod = sts.at("spec.template.spec");
        let containers = pod.at("containers").seq();
        assert_eq!(containers.len(), 1, "{file}: one container");
        let c = &containers[0];

        check_http_probes(&file, sts.at("spec.template"), c);

        // The grace period covers tandem's whole stop budget, plus a margin.
        let env: BTreeMap<&str, &Yaml> = c
            .at("env")
            .seq()
            .iter()
            .map(|e| (e.at("name").str(), e))
            .collect();
        let budget = seconds(env["TANDEM_STOP_TIMEOUT"].at("value").str());
        let grace = seconds(pod.at("terminationGracePeriodSeconds").str());
        assert!(
            grace > budget && MARGIN_S.contains(&(grace - budget)),
            "{file}: terminationGracePeriodSeconds {grace} vs TANDEM_STOP_TIMEOUT {budget}"
        );
        for secret in ["POSTGRES_PASSWORD", "HIVE_API_KEY"] {
            assert!(
                env.get(secret).and_then(|e| e.get("valueFrom")).is_some(),
                "{file}: {secret} not from a Secret"
            );
        }

        // PGDATA lives on the claim template's volume.
        let claim = sts.at("spec.volumeClaimTemplates").seq()[0]
            .at("metadata.name")
            .str();
        let mount = c
            .at("volumeMounts")
            .seq()
            .iter()
            .find(|m| m.at("name").str() == claim)
            .unwrap_or_else(|| panic!("{file}: volume claim {claim} is not mounted"));
        assert_eq!(mount.at("mountPath").str(), PGDATA_MOUNT, "{file}");
        assert!(
            env["PGDATA"]
                .at("value")
                .str()
                .starts_with(&format!("{PGDATA_MOUNT}/")),
            "{file}: PGDATA"
        );

        // Ports: the container's is the image's, and every Service forwards to it.
        let port = Dockerfile::load(flavor).port().to_string();
        let cport = &c.at("ports").seq()[0];
        assert_eq!(
            cport.at("containerPort").str(),
            port,
            "{file}: containerPort"
        );
        let services = kind("Service");
        assert!(!services.is_empty(), "{file}: no Service");
        for svc in &services {
            assert_eq!(
                svc.at("spec.selector.app").str(),
                flavor,
                "{file}: Service selector"
            );
            for p in svc.at("spec.ports").seq() {
                assert_eq!(p.at("port").str(), port, "{file}: Service port");
                let target = p.at("targetPort").str();
                assert!(
                    target == port || target == cport.at("name").str(),
                    "{file}: targetPort {target}"
                );
            }
        }
        let governing = sts.at("spec.serviceName").str();
        assert!(
            services
                .iter()
                .any(|s| s.at("metadata.name").str() == governing
                    && s.at("spec.clusterIP").str() == "None"),
            "{file}: serviceName {governing} is not a headless Service here"
        );
    }
}

/// "9", "9s", "1m": whole seconds.
fn seconds(s: &str) -> u64 {
    let s = s.trim();
    let (n, unit) = match s.strip_suffix('s') {
        Some(n) => (n, 1),
        None => match s.strip_suffix('m') {
            Some(n) => (n, 60),
            None => (s, 1),
        },
    };
    n.parse::<u64>()
        .unwrap_or_else(|e| panic!("duration {s:?}: {e}"))
        * unit
}

// ---------------------------------------------------------------------------------------------
// A YAML subset reader

#[derive(Debug)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    Str(String),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A dotted path of mapping keys; panics naming the path when it is missing.
    fn at(&self, path: &str) -> &Yaml {
        path.split('.')
            .try_fold(self, |node, key| node.get(key))
            .unwrap_or_else(|| panic!("no {path:?} in {self:?}"))
    }

    fn str(&self) -> &str {
        match self {
            Yaml::Str(s) => s,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    fn seq(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            other => panic!("not a sequence: {other:?}"),
        }
    }

    fn strs(&self) -> Vec<&str> {
        self.seq().iter().map(Yaml::str).collect()
    }
}

/// One significant line: its number (for errors), indentation and text without comments.
struct Line {
    no: usize,
    indent: usize,
    text: String,
}

fn parse_yaml(text: &str) -> Vec<Yaml> {
    let mut docs = vec![];
    let mut lines = vec![];
    for (no, raw) in text.lines().enumerate() {
        if raw == "---" {
            docs.push(std::mem::take(&mut lines));
            continue;
        }
        let text = strip_comment(raw).trim_end();
        if text.trim().is_empty() {
            continue;
        }
        let indent = text.len() - text.trim_start().len();
        lines.push(Line {
            no: no + 1,
            indent,
            text: text.trim_start().to_string(),
        });
    }
    docs.push(lines);
    docs.into_iter()
        .filter(|d| !d.is_empty())
        .map(|mut lines| {
            let mut i = 0;
            let indent = lines[0].indent;
            let node = parse_node(&mut lines, &mut i, indent);
            assert!(
                i == lines.len(),
                "YAML line {}: unexpected indentation",
                lines[i.min(lines.len() - 1)].no
            );
            node
        })
        .collect()
}

/// A `#` outside quotes, at the start or after a space, starts a comment.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (at, ch) in line.char_indices() {
        match (quote, ch) {
            (None, '"' | '\'') => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev == ' ' => return &line[..at],
            _ => {}
        }
        prev = ch;
    }
    line
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: value` or `key:`, with a plain or quoted key.
fn split_key(text: &str) -> Option<(String, &str)> {
    if text.starts_with('[') || text.starts_with('{') {
        return None;
    }
    let (key, rest) = if let Some(quoted) = text.strip_prefix('"') {
        let end = quoted.find('"')?;
        (&quoted[..end], quoted[end + 1..].strip_prefix(':')?)
    } else if let Some(at) = text.find(": ") {
        (&text[..at], &text[at + 1..])
    } else {
        (text.strip_suffix(':')?, "")
    };
    Some((key.to_string(), rest.trim()))
}

fn parse_node(lines: &mut [Line], i: &mut usize, indent: usize) -> Yaml {
    let line = &lines[*i];
    if is_item(&line.text) {
        parse_seq(lines, i, indent)
    } else if split_key(&line.text).is_some() {
        parse_map(lines, i, indent)
    } else {
        *i += 1;
        scalar(&lines[*i - 1].text, lines[*i - 1].no)
    }
}

fn parse_seq(lines: &mut [Line], i: &mut usize, indent: usize) -> Yaml {
    let mut items = vec![];
    while *i < lines.len() && lines[*i].indent == indent && is_item(&lines[*i].text) {
        let rest = lines[*i].text[1..].trim_start().to_string();
        if rest.is_empty() {
            *i += 1;
            let inner = lines.get(*i).map_or(0, |l| l.indent);
            assert!(
                inner > indent,
                "YAML line {}: empty sequence item",
                lines[*i - 1].no
            );
            items.push(parse_node(lines, i, inner));
        } else {
            // `- key: v` opens a mapping whose keys line up with `key`: re-read this line as
            // its first entry.
            let inner = indent + (lines[*i].text.len() - rest.len());
            lines[*i].indent = inner;
            lines[*i].text = rest;
            items.push(parse_node(lines, i, inner));
        }
    }
    Yaml::Seq(items)
}

fn parse_map(lines: &mut [Line], i: &mut usize, indent: usize) -> Yaml {
    let mut entries = vec![];
    while *i < lines.len() && lines[*i].indent == indent && !is_item(&lines[*i].text) {
        let no = lines[*i].no;
        let (key, value) = split_key(&lines[*i].text)
            .unwrap_or_else(|| panic!("YAML line {no}: expected `key: value`"));
        let value = value.to_string();
        *i += 1;
        let node = if !value.is_empty() {
            scalar(&value, no)
        } else {
            match lines.get(*i) {
                Some(next)
                    if next.indent > indent || (next.indent == indent && is_item(&next.text)) =>
                {
                    let inner = next.indent;
                    parse_node(lines, i, inner)
                }
                _ => Yaml::Str(String::new()),
            }
        };
        entries.push((key, node));
    }
    Yaml::Map(entries)
}

/// A plain or quoted scalar, or a flow sequence of them (`["a", b]`); `{}` is an empty map.
fn scalar(text: &str, no: usize) -> Yaml {
    let unquote = |s: &str| {
        let s = s.trim();
        for q in ['"', '\''] {
            if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
                return s[1..s.len() - 1].to_string();
            }
        }
        s.to_string()
    };
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .unwrap_or_else(|| panic!("YAML line {no}: unclosed ["));
        return Yaml::Seq(
            inner
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| Yaml::Str(unquote(s)))
                .collect(),
        );
    }
    if text == "{}" {
        return Yaml::Map(vec![]);
    }
    assert!(
        !text.starts_with('{') && !text.starts_with('|') && !text.starts_with('>'),
        "YAML line {no}: flow mappings and block scalars are outside the subset this test reads"
    );
    Yaml::Str(unquote(text))
}

#[test]
fn yaml_reader_reads_the_subset_and_refuses_the_rest() {
    let docs = parse_yaml(concat!(
        "a: 1 # comment\n",
        "b:\n",
        "  - name: x\n",
        "    value: \"y # not a comment\"\n",
        "  - plain\n",
        "c: [\"tandem\", healthcheck]\n",
        "d:\n",
        "- 1\n",
        "---\n",
        "e: {}\n",
    ));
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].at("a").str(), "1");
    assert_eq!(
        docs[0].at("b").seq()[0].at("value").str(),
        "y # not a comment"
    );
    assert_eq!(docs[0].at("b").seq()[1].str(), "plain");
    assert_eq!(docs[0].at("c").strs(), ["tandem", "healthcheck"]);
    assert_eq!(docs[0].at("d").strs(), ["1"]);
    assert!(matches!(docs[1].at("e"), Yaml::Map(m) if m.is_empty()));
    assert!(std::panic::catch_unwind(|| parse_yaml("a: {b: 1}\n")).is_err());
}

/// The layering of src/lib.rs: each module uses only those below it (tests aside), so the
/// decisions never reach up into the I/O and the ground floor knows nothing of services.
/// Fails as soon as a `use crate::X` (or `crate::X::...`) points up.
#[test]
fn modules_import_only_the_layers_below_them() {
    let order = [
        "process",
        "supervisor",
        "logs",
        "health",
        "postgres",
        "config",
        "control",
        "runtime",
    ];
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for (level, module) in order.iter().enumerate() {
        let mut files = Vec::new();
        let single = src.join(format!("{module}.rs"));
        if single.exists() {
            files.push(single);
        }
        let dir = src.join(module);
        if dir.is_dir() {
            for e in std::fs::read_dir(&dir).unwrap() {
                files.push(e.unwrap().path());
            }
        }
        assert!(!files.is_empty(), "no source for {module}");
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if name == "tests.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            // Code before any `#[cfg(test)]` module: test code may use the test helpers.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            for (n, line) in code.lines().enumerate() {
                let mut rest = line;
                while let Some(i) = rest.find("crate::") {
                    rest = &rest[i + 7..];
                    let used: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if let Some(up) = order.iter().position(|m| *m == used) {
                        if up > level {
                            problems.push(format!(
                                "{}:{}: {module} uses {used}, which is above it",
                                file.display(),
                                n + 1
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
