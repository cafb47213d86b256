//! The config file: TOML whose every key, type and value is checked before anything
//! starts. Every problem is reported, all at once, as `FILE:LINE:COLUMN: what is wrong;
//! what to write instead`.
//!
//! Strings may use `${VAR}` and `${VAR:-default}` from tandem's environment (`$$` is a
//! `$`); a variable that is not set and has no default is a problem, not an empty string.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{parse_duration, parse_signal};
use crate::supervisor::{Condition, OnUnhealthy, StopExit};

/// Where a value was written: a byte range of the file.
pub type Span = Range<usize>;

/// The file's text, for turning byte offsets into lines and columns.
pub struct Source {
    pub path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(path: PathBuf, text: String) -> Source {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let col = self.text[start..offset].chars().count() + 1;
        (line + 1, col)
    }

    pub fn locate(&self, span: &Span) -> String {
        let (line, col) = self.position(span.start);
        format!("{}:{line}:{col}", self.path.display())
    }
}

/// Everything wrong with a file so far.
pub struct Problems<'a> {
    src: &'a Source,
    pub list: Vec<String>,
}

impl<'a> Problems<'a> {
    pub fn new(src: &'a Source) -> Problems<'a> {
        Problems {
            src,
            list: Vec::new(),
        }
    }

    /// One problem at `span`, as one line ([`super::one_line`]).
    pub fn at(&mut self, span: &Span, message: impl std::fmt::Display) {
        self.push(format!("{}: {message}", self.src.locate(span)));
    }

    /// One problem without a place in the file, as one line.
    pub fn push(&mut self, message: String) {
        self.list.push(super::one_line(&message));
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub value: T,
    pub span: Span,
}

#[derive(Debug, Default)]
pub struct File {
    pub tandem: TandemSection,
    pub postgres: Option<PostgresSection>,
    pub services: Vec<ServiceSection>,
}

#[derive(Debug, Default)]
pub struct TandemSection {
    pub stop_timeout: Option<At<Duration>>,
    pub stop_exit: Option<StopExit>,
    pub socket: Option<PathBuf>,
    /// `http = "127.0.0.1:9188"`; `Some(None)` when it says "off".
    pub http: Option<Option<std::net::SocketAddr>>,
}

#[derive(Debug)]
pub struct PostgresSection {
    pub span: Span,
    /// As the official image's variables: POSTGRES_USER, PGDATA, ...
    pub vars: Vec<(&'static str, String)>,
    pub initdb_args: Option<Vec<String>>,
    pub bin_dir: Option<PathBuf>,
    /// `-c name=value` for the server.
    pub settings: Vec<(String, String)>,
    pub start_timeout: Option<Duration>,
    pub health: Timing,
    /// The database URL under more names, each in its app's scheme.
    pub urls: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Daemon,
    Oneshot,
    External,
}

#[derive(Debug)]
pub struct ServiceSection {
    pub name: At<String>,
    pub command: Option<At<Vec<String>>>,
    pub kind: Kind,
    pub user: Option<At<String>>,
    pub group: Option<At<String>>,
    pub working_dir: Option<PathBuf>,
    pub env: Vec<(String, At<String>)>,
    pub env_file: Option<At<String>>,
    pub depends_on: Vec<(At<String>, Condition)>,
    pub health: Option<HealthSection>,
    pub restart: Option<At<Restart>>,
    pub stop_signal: Option<Signal>,
    pub stop_timeout: Option<At<Duration>>,
    pub reload_signal: Option<Signal>,
    pub required: bool,
    pub main: Option<At<bool>>,
}

/// A probe's timing as written; unset fields take the defaults.
#[derive(Debug, Default, Clone)]
pub struct Timing {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
    pub on_unhealthy: Option<OnUnhealthy>,
}

#[derive(Debug)]
pub struct HealthSection {
    pub span: Span,
    pub probe: ProbeDef,
    pub timing: Timing,
}

#[derive(Debug, Clone)]
pub enum ProbeDef {
    Http(String),
    Tcp(String),
    Exec(Vec<String>),
    /// `postgresql://user:password@host:port/db`.
    Postgres(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    pub policy: RestartPolicy,
    pub delay: Option<Duration>,
    pub factor: Option<f64>,
    pub max_delay: Option<Duration>,
    pub jitter: Option<f64>,
    pub max_restarts: Option<u32>,
    pub window: Option<Duration>,
    pub reset_after: Option<Duration>,
}

/// Reads and checks the file. `env` is tandem's environment for `${VAR}`. A file that is
/// not TOML is `Err` with every syntax error; otherwise what could be read, and the
/// problems with the rest (checked further by the caller, so all come out at once).
pub fn parse(
    src: &Source,
    env: &HashMap<String, String>,
) -> Result<(File, Vec<String>), Vec<String>> {
    let mut p = Problems::new(src);
    let (doc, syntax) = DeTable::parse_recoverable(&src.text);
    // The parser's recovery may report one mistake several times at the same place (a file
    // cut short inside an inline table: three errors at its end); the first says it.
    let mut places = std::collections::HashSet::new();
    for e in &syntax {
        let span = e.span().unwrap_or(0..0);
        if places.insert(span.start) {
            p.at(&span, format!("not valid TOML: {}", e.message()));
        }
    }
    if !syntax.is_empty() {
        return Err(p.list);
    }
    let mut r = Reader { p, env };
    let file = r.document(doc.get_ref());
    Ok((file, r.p.list))
}

struct Reader<'a, 'e> {
    p: Problems<'a>,
    env: &'e HashMap<String, String>,
}

type Table<'i> = DeTable<'i>;
type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["tandem", "postgres", "service"];
const TANDEM_KEYS: &[&str] = &["stop_timeout", "stop_exit", "socket", "http"];
const POSTGRES_KEYS: &[&str] = &[
    "data_dir",
    "port",
    "bin_dir",
    "init_dir",
    "socket_dir",
    "user",
    "password",
    "password_file",
    "database",
    "initdb_args",
    "initdb_waldir",
    "host_auth_method",
    "settings",
    "start_timeout",
    "health",
    "urls",
    "upgrade",
    "old_bin_dir",
    "upgrade_mode",
    "upgrade_keep_old",
    "sync_password",
];
const SERVICE_KEYS: &[&str] = &[
    "command",
    "kind",
    "user",
    "group",
    "working_dir",
    "env",
    "env_file",
    "depends_on",
    "health",
    "restart",
    "stop",
    "reload_signal",
    "required",
    "main",
];
const TIMING_KEYS: &[&str] = &[
    "interval",
    "timeout",
    "retries",
    "start_period",
    "on_unhealthy",
];
const PROBE_KEYS: &[&str] = &["http", "tcp", "exec", "postgres"];
const RESTART_KEYS: &[&str] = &[
    "policy",
    "delay",
    "factor",
    "max_delay",
    "jitter",
    "max_restarts",
    "window",
    "reset_after",
];
const STOP_KEYS: &[&str] = &["signal", "timeout"];

impl Reader<'_, '_> {
    fn document(&mut self, doc: &Table) -> File {
        let mut file = File::default();
        for (key, value) in doc.iter() {
            match key.get_ref().as_ref() {
                "tandem" => file.tandem = self.tandem(value),
                "postgres" => file.postgres = self.postgres(value),
                "service" => {
                    if let Some(t) = self.table(value, "[service]") {
                        for (name, svc) in t.iter() {
                            if let Some(s) = self.service(name, svc) {
                                file.services.push(s);
                            }
                        }
                    }
                }
                other => self.unknown(key, other, "at the top level", TOP_KEYS),
            }
        }
        file
    }

    fn unknown(
        &mut self,
        key: &Spanned<std::borrow::Cow<str>>,
        name: &str,
        place: &str,
        known: &[&str],
    ) {
        let hint = match closest(name, known) {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("known keys: {}", known.join(", ")),
        };
        self.p
            .at(&key.span(), format!("unknown key `{name}` {place}; {hint}"));
    }

    fn tandem(&mut self, value: &Value) -> TandemSection {
        let mut out = TandemSection::default();
        let Some(t) = self.table(value, "[tandem]") else {
            return out;
        };
        for (key, v) in t.iter() {
            match key.get_ref().as_ref() {
                "stop_timeout" => {
                    out.stop_timeout = self.duration(v, "stop_timeout").map(|d| At {
                        value: d,
                        span: v.span(),
                    })
                }
                "stop_exit" => {
                    out.stop_exit = self.choice(
                        v,
                        "stop_exit",
                        &[("clean", StopExit::Clean), ("app", StopExit::App)],
                    )
                }
                "socket" => out.socket = self.string(v, "socket").map(PathBuf::from),
                "http" => {
                    out.http = self
                        .string(v, "http")
                        .and_then(|s| match super::http_address(&s) {
                            Ok(a) => Some(a),
                            Err(e) => {
                                self.p.at(&v.span(), format!("http: {e}"));
                                None
                            }
                        })
                }
                other => self.unknown(key, other, "in [tandem]", TANDEM_KEYS),
            }
        }
        out
    }

    fn postgres(&mut self, value: &Value) -> Option<PostgresSection> {
        let t = self.table(value, "[postgres]")?;
        let mut out = PostgresSection {
            span: value.span(),
            vars: Vec::new(),
            initdb_args: None,
            bin_dir: None,
            settings: Vec::new(),
            start_timeout: None,
            health: Timing::default(),
            urls: Vec::new(),
        };
        for (key, v) in t.iter() {
            let name = key.get_ref().as_ref();
            let var = match name {
                "data_dir" => Some("PGDATA"),
                "init_dir" => Some("TANDEM_INITDB_DIR"),
                "socket_dir" => Some("TANDEM_PG_SOCKET_DIR"),
                "user" => Some("POSTGRES_USER"),
                "password" => Some("POSTGRES_PASSWORD"),
                "password_file" => Some("POSTGRES_PASSWORD_FILE"),
                "database" => Some("POSTGRES_DB"),
                "initdb_waldir" => Some("POSTGRES_INITDB_WALDIR"),
                "host_auth_method" => Some("POSTGRES_HOST_AUTH_METHOD"),
                "old_bin_dir" => Some("TANDEM_PG_OLD_BINDIR"),
                _ => None,
            };
            if let Some(var) = var {
                if let Some(s) = self.string(v, name) {
                    out.vars.push((var, s));
                }
                continue;
            }
            match name {
                "port" => {
                    if let Some(n) = self.integer(v, "port", 1, 65535) {
                        out.vars.push(("PGPORT", n.to_string()));
                    }
                }
                "bin_dir" => out.bin_dir = self.string(v, "bin_dir").map(PathBuf::from),
                "upgrade" | "upgrade_mode" => {
                    let (var, allowed, example): (&'static str, &[&str], &str) =
                        if name == "upgrade" {
                            ("TANDEM_PG_UPGRADE", &["auto", "off"], "\"auto\"")
                        } else {
                            (
                                "TANDEM_PG_UPGRADE_MODE",
                                &["auto", "link", "copy"],
                                "\"auto\"",
                            )
                        };
                    if let Some(s) = self.string(v, name) {
                        if allowed.contains(&s.as_str()) {
                            out.vars.push((var, s));
                        } else {
                            self.p.at(
                                &v.span(),
                                format!(
                                    "{name} = {s:?}: use one of {}, e.g. {name} = {example}",
                                    allowed.join(", ")
                                ),
                            );
                        }
                    }
                }
                "upgrade_keep_old" | "sync_password" => {
                    let var = if name == "sync_password" {
                        "TANDEM_PG_SYNC_PASSWORD"
                    } else {
                        "TANDEM_PG_UPGRADE_KEEP_OLD"
                    };
                    if let Some(b) = self.boolean(v, name) {
                        out.vars
                            .push((var, if b { "on" } else { "off" }.to_string()));
                    }
                }
                "initdb_args" => out.initdb_args = self.strings(v, "initdb_args"),
                "settings" => out.settings = self.string_table(v, "settings"),
                "start_timeout" => out.start_timeout = self.duration(v, "start_timeout"),
                "urls" => out.urls = self.string_table(v, "urls"),
                "health" => {
                    if let Some(h) = self.table(v, "health") {
                        out.health = self.timing(h, &[]);
                    }
                }
                other => self.unknown(key, other, "in [postgres]", POSTGRES_KEYS),
            }
        }
        Some(out)
    }

    fn service(
        &mut self,
        name: &Spanned<std::borrow::Cow<str>>,
        value: &Value,
    ) -> Option<ServiceSection> {
        let section = format!("[service.{}]", name.get_ref());
        let t = self.table(value, &section)?;
        let n = name.get_ref().to_string();
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            self.p.at(
                &name.span(),
                format!("service name {n:?}: use letters, digits, - and _ (it prefixes the service's log lines)"),
            );
        }
        let mut s = ServiceSection {
            name: At {
                value: n,
                span: name.span(),
            },
            command: None,
            kind: Kind::Daemon,
            user: None,
            group: None,
            working_dir: None,
            env: Vec::new(),
            env_file: None,
            depends_on: Vec::new(),
            health: None,
            restart: None,
            stop_signal: None,
            stop_timeout: None,
            reload_signal: None,
            required: true,
            main: None,
        };
        for (key, v) in t.iter() {
            let k = key.get_ref().as_ref();
            match k {
                "command" => {
                    s.command = self.strings(v, "command").and_then(|argv| {
                        if argv.is_empty() {
                            self.p.at(&v.span(), "command is empty; write the program and its arguments, e.g. [\"uvicorn\", \"app:app\"]");
                            None
                        } else {
                            Some(At {
                                value: argv,
                                span: v.span(),
                            })
                        }
                    })
                }
                "kind" => {
                    if let Some(kind) = self.choice(
                        v,
                        "kind",
                        &[
                            ("daemon", Kind::Daemon),
                            ("oneshot", Kind::Oneshot),
                            ("external", Kind::External),
                        ],
                    ) {
                        s.kind = kind;
                    }
                }
                "user" => s.user = self.string_at(v, "user"),
                "group" => s.group = self.string_at(v, "group"),
                "working_dir" => s.working_dir = self.string(v, "working_dir").map(PathBuf::from),
                "env" => {
                    if let Some(t) = self.table(v, "env") {
                        for (k2, v2) in t.iter() {
                            if let Some(val) = self.string(v2, k2.get_ref()) {
                                s.env.push((
                                    k2.get_ref().to_string(),
                                    At {
                                        value: val,
                                        span: v2.span(),
                                    },
                                ));
                            }
                        }
                    }
                }
                "env_file" => s.env_file = self.string_at(v, "env_file"),
                "depends_on" => {
                    if let Some(t) = self.table(v, "depends_on") {
                        for (dep, cond) in t.iter() {
                            let c = self.choice(
                                cond,
                                dep.get_ref(),
                                &[
                                    ("started", Condition::Started),
                                    ("healthy", Condition::Healthy),
                                    ("completed", Condition::Completed),
                                ],
                            );
                            if let Some(c) = c {
                                s.depends_on.push((
                                    At {
                                        value: dep.get_ref().to_string(),
                                        span: dep.span(),
                                    },
                                    c,
                                ));
                            }
                        }
                    }
                }
                "health" => s.health = self.health(v),
                "restart" => s.restart = self.restart(v),
                "stop" => {
                    if let Some(t) = self.table(v, "stop") {
                        for (k2, v2) in t.iter() {
                            match k2.get_ref().as_ref() {
                                "signal" => s.stop_signal = self.signal(v2, "stop.signal"),
                                "timeout" => {
                                    s.stop_timeout = self.duration(v2, "stop.timeout").map(|d| At {
                                        value: d,
                                        span: v2.span(),
                                    })
                                }
                                other => self.unknown(k2, other, "in stop", STOP_KEYS),
                            }
                        }
                    }
                }
                "reload_signal" => s.reload_signal = self.signal(v, "reload_signal"),
                "required" => {
                    if let Some(b) = self.boolean(v, "required") {
                        s.required = b;
                    }
                }
                "main" => {
                    s.main = self.boolean(v, "main").map(|b| At {
                        value: b,
                        span: v.span(),
                    })
                }
                other => self.unknown(key, other, &format!("in {section}"), SERVICE_KEYS),
            }
        }
        Some(s)
    }

    fn health(&mut self, v: &Value) -> Option<HealthSection> {
        let t = self.table(v, "health")?;
        let mut probes = Vec::new();
        for (key, val) in t.iter() {
            let probe = match key.get_ref().as_ref() {
                "http" => self.string(val, "health.http").map(ProbeDef::Http),
                "tcp" => self.string(val, "health.tcp").map(ProbeDef::Tcp),
                "postgres" => self.string(val, "health.postgres").map(ProbeDef::Postgres),
                "exec" => self.strings(val, "health.exec").map(ProbeDef::Exec),
                _ => continue,
            };
            if let Some(p) = probe {
                probes.push((p, val.span()));
            }
        }
        let timing = self.timing(t, PROBE_KEYS);
        match probes.len() {
            1 => {
                let (probe, _) = probes.remove(0);
                Some(HealthSection {
                    span: v.span(),
                    probe,
                    timing,
                })
            }
            0 => {
                self.p.at(
                    &v.span(),
                    "health has no probe: add one of http = \"http://...\", tcp = \"host:port\", exec = [...], postgres = \"postgresql://...\"",
                );
                None
            }
            _ => {
                self.p.at(
                    &probes[1].1,
                    "health has more than one probe: choose one of http, tcp, exec, postgres",
                );
                None
            }
        }
    }

    /// The timing keys of a health table; `also` are other keys allowed there.
    fn timing(&mut self, t: &Table, also: &[&str]) -> Timing {
        let mut out = Timing::default();
        for (key, v) in t.iter() {
            match key.get_ref().as_ref() {
                "interval" => {
                    out.interval = self.duration(v, "interval").and_then(|d| {
                        if d.is_zero() {
                            self.p
                                .at(&v.span(), "interval must be more than 0, e.g. \"5s\"");
                            None
                        } else {
                            Some(d)
                        }
                    })
                }
                "timeout" => out.timeout = self.duration(v, "timeout"),
                "retries" => out.retries = self.integer(v, "retries", 1, 1000).map(|n| n as u32),
                "start_period" => out.start_period = self.duration(v, "start_period"),
                "on_unhealthy" => {
                    out.on_unhealthy = self.choice(
                        v,
                        "on_unhealthy",
                        &[
                            ("restart", OnUnhealthy::Restart),
                            ("report", OnUnhealthy::Report),
                        ],
                    )
                }
                other if also.contains(&other) => {}
                other => {
                    let mut known: Vec<&str> = TIMING_KEYS.to_vec();
                    known.extend_from_slice(also);
                    self.unknown(key, other, "in health", &known)
                }
            }
        }
        out
    }

    fn restart(&mut self, v: &Value) -> Option<At<Restart>> {
        let policies = [
            ("no", RestartPolicy::No),
            ("on-failure", RestartPolicy::OnFailure),
            ("always", RestartPolicy::Always),
        ];
        let mut r = Restart {
            policy: RestartPolicy::OnFailure,
            delay: None,
            factor: None,
            max_delay: None,
            jitter: None,
            max_restarts: None,
            window: None,
            reset_after: None,
        };
        if let DeValue::String(_) = v.get_ref() {
            r.policy = self.choice(v, "restart", &policies)?;
            return Some(At {
                value: r,
                span: v.span(),
            });
        }
        let t = self.table(v, "restart")?;
        for (key, val) in t.iter() {
            match key.get_ref().as_ref() {
                "policy" => {
                    if let Some(p) = self.choice(val, "restart.policy", &policies) {
                        r.policy = p;
                    }
                }
                "delay" => r.delay = self.duration(val, "restart.delay"),
                "max_delay" => r.max_delay = self.duration(val, "restart.max_delay"),
                "window" => r.window = self.duration(val, "restart.window"),
                "reset_after" => r.reset_after = self.duration(val, "restart.reset_after"),
                "max_restarts" => {
                    r.max_restarts = self
                        .integer(val, "restart.max_restarts", 0, 1_000_000)
                        .map(|n| n as u32)
                }
                "factor" => r.factor = self.float(val, "restart.factor", 1.0, 100.0),
                "jitter" => r.jitter = self.float(val, "restart.jitter", 0.0, 1.0),
                other => self.unknown(key, other, "in restart", RESTART_KEYS),
            }
        }
        Some(At {
            value: r,
            span: v.span(),
        })
    }

    // -- values ------------------------------------------------------------------------

    fn type_name(v: &DeValue) -> &'static str {
        match v {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date",
            DeValue::Array(_) => "an array",
            DeValue::Table(_) => "a table",
        }
    }

    fn wrong(&mut self, v: &Value, what: &str, want: &str, example: &str) {
        self.p.at(
            &v.span(),
            format!(
                "{what} must be {want}, not {}; e.g. {what} = {example}",
                Self::type_name(v.get_ref())
            ),
        );
    }

    fn table<'v, 'i>(&mut self, v: &'v Value<'i>, what: &str) -> Option<&'v Table<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong(v, what, "a table", "{ ... }");
                None
            }
        }
    }

    /// A string, `${VAR}` expanded.
    fn string(&mut self, v: &Value, what: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => match expand(s, self.env) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.p.at(&v.span(), format!("{what}: {e}"));
                    None
                }
            },
            _ => {
                self.wrong(v, what, "a string", "\"...\"");
                None
            }
        }
    }

    fn string_at(&mut self, v: &Value, what: &str) -> Option<At<String>> {
        self.string(v, what).map(|value| At {
            value,
            span: v.span(),
        })
    }

    fn strings(&mut self, v: &Value, what: &str) -> Option<Vec<String>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(v, what, "an array of strings", "[\"program\", \"arg\"]");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match self.string(item, what) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn string_table(&mut self, v: &Value, what: &str) -> Vec<(String, String)> {
        let Some(t) = self.table(v, what) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, val) in t.iter() {
            let value = match val.get_ref() {
                DeValue::Integer(i) => Some(i.as_str().to_string()),
                DeValue::Float(f) => Some(f.as_str().to_string()),
                DeValue::Boolean(b) => Some(if *b { "on" } else { "off" }.to_string()),
                _ => self.string(val, k.get_ref()),
            };
            if let Some(value) = value {
                out.push((k.get_ref().to_string(), value));
            }
        }
        out
    }

    fn boolean(&mut self, v: &Value, what: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong(v, what, "true or false", "true");
                None
            }
        }
    }

    fn integer(&mut self, v: &Value, what: &str, min: i64, max: i64) -> Option<i64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong(v, what, "an integer", &min.max(1).to_string());
            return None;
        };
        let digits = i.as_str().replace('_', "");
        let (sign, digits) = match digits.strip_prefix('-') {
            Some(d) => (-1, d.to_string()),
            None => (1, digits.trim_start_matches('+').to_string()),
        };
        let body = digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0o"))
            .or_else(|| digits.strip_prefix("0b"))
            .unwrap_or(&digits);
        match i64::from_str_radix(body, i.radix()).ok().map(|n| n * sign) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.p
                    .at(&v.span(), format!("{what} must be from {min} to {max}"));
                None
            }
        }
    }

    fn float(&mut self, v: &Value, what: &str, min: f64, max: f64) -> Option<f64> {
        let n = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
            _ => {
                self.wrong(v, what, "a number", &min.to_string());
                return None;
            }
        };
        match n {
            Some(n) if n >= min && n <= max => Some(n),
            _ => {
                self.p
                    .at(&v.span(), format!("{what} must be from {min} to {max}"));
                None
            }
        }
    }

    /// "5s", "500ms", "1m", or a number of seconds.
    fn duration(&mut self, v: &Value, what: &str) -> Option<Duration> {
        let text = match v.get_ref() {
            DeValue::Integer(i) => i.as_str().to_string(),
            DeValue::Float(f) => f.as_str().to_string(),
            DeValue::String(_) => self.string(v, what)?,
            _ => {
                self.wrong(v, what, "a duration", "\"5s\"");
                return None;
            }
        };
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.p.at(&v.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    fn signal(&mut self, v: &Value, what: &str) -> Option<Signal> {
        let s = self.string(v, what)?;
        match parse_signal(&s) {
            Ok(sig) => Some(sig),
            Err(e) => {
                self.p
                    .at(&v.span(), format!("{what}: {e} (e.g. \"SIGTERM\")"));
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, v: &Value, what: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(v, what)?;
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.p.at(
                    &v.span(),
                    format!("{what} = {s:?}: use one of {}", names.join(", ")),
                );
                None
            }
        }
    }
}

/// `${VAR}`, `${VAR:-default}` and `$$` in `s`, from `env`.
pub fn expand(s: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                return Err("`${` without its closing `}`".into());
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("${{{inner}}}: {name:?} is not a variable name"));
            }
            match (env.get(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "${{{name}}} is not set; set it, or write ${{{name}:-default}}"
                    ))
                }
            }
        } else {
            // A lone `$` (a shell variable in an exec probe, say) stays as it is.
            out.push('$');
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The known key closest to a misspelt one, if it is close.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `KEY=VALUE` lines (`#` comments, optional quotes, `export ` allowed), as Docker's and
/// dotenv's files are written.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = read_limited(path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("{}:{}: not KEY=VALUE", path.display(), n + 1));
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.trim().to_string(), v.to_string()));
    }
    Ok(out)
}

/// Files tandem reads for values (secrets, env files) are at most this long: a mistake
/// such as `/dev/zero` must not eat the memory.
pub const MAX_VALUE_FILE: u64 = 64 * 1024;

/// A file's text, refused past [`MAX_VALUE_FILE`] (and a FIFO nobody writes to, at once:
/// [`postgres::settings::read_bounded`]).
pub fn read_limited(path: &Path) -> Result<String, String> {
    use crate::postgres::settings::{read_bounded, ReadError};
    let bytes = match read_bounded(path, MAX_VALUE_FILE) {
        Ok(bytes) => bytes,
        Err(ReadError::TooLong) => {
            return Err(format!(
                "{} is longer than {} KiB, the most tandem reads for a value",
                path.display(),
                MAX_VALUE_FILE / 1024
            ))
        }
        Err(ReadError::Failed(e)) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    String::from_utf8(bytes)
        .map_err(|_| format!("cannot read {}: it is not UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source::new(PathBuf::from("t.toml"), text.to_string())
    }

    fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(&src(text), &env) {
            Ok((_, p)) => p,
            Err(p) => p,
        }
    }

    /// `FILE:LINE:COL` of the first occurrence of `needle` in `text`.
    fn at(text: &str, needle: &str) -> String {
        let s = src(text);
        let offset = text.find(needle).expect("needle in text");
        s.locate(&(offset..offset))
    }

    #[test]
    fn every_problem_names_its_line_and_column() {
        let text = r#"[tandem]
stop_timeout = "soon"
flavour = 1

[service.api]
command = "not an array"
kind = "deamon"
depends_on = { db = "ready" }
health = { http = "http://x/", interval = 0 }
restart = { policy = "on-failure", factor = 0.5, window = "x" }
stop = { signal = "SIGNOPE", timeout = "1h" }
main = "yes"
env = { A = "${NOT_SET_ANYWHERE}" }
"#;
        let got = problems(text, &[]);
        let want = [
            (at(text, "\"soon\""), "stop_timeout"),
            (at(text, "flavour"), "unknown key `flavour` in [tandem]"),
            (
                at(text, "\"not an array\""),
                "command must be an array of strings",
            ),
            (
                at(text, "\"deamon\""),
                "kind = \"deamon\": use one of daemon, oneshot, external",
            ),
            (
                at(text, "\"ready\""),
                "db = \"ready\": use one of started, healthy, completed",
            ),
            (at(text, "0 }"), "interval must be more than 0"),
            (at(text, "0.5"), "restart.factor must be from 1 to 100"),
            (at(text, "\"x\" }"), "restart.window"),
            (at(text, "\"SIGNOPE\""), "stop.signal"),
            (at(text, "\"1h\""), "stop.timeout"),
            (at(text, "\"yes\""), "main must be true or false"),
            (at(text, "\"${NOT"), "${NOT_SET_ANYWHERE} is not set"),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (line, (pos, words)) in got.iter().zip(&want) {
            assert!(
                line.starts_with(&format!("{pos}: ")) && line.contains(words),
                "{line:?} should be at {pos} and say {words:?}"
            );
        }
    }

    #[test]
    fn expansion_defaults_escapes_and_errors() {
        let env = HashMap::from([("PW".to_string(), "s3cret".to_string())]);
        assert_eq!(expand("a ${PW} b", &env).unwrap(), "a s3cret b");
        assert_eq!(expand("${NOPE:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("$$HOME and $1", &env).unwrap(), "$HOME and $1");
        assert!(expand("${NOPE}", &env)
            .unwrap_err()
            .contains("${NOPE:-default}"));
        assert!(expand("${PW", &env).is_err());
        assert!(expand("${1X}", &env).is_err());
    }

    #[test]
    fn not_toml_lists_every_syntax_error() {
        let got = problems("[service.x\ncommand = [\"a\"\n", &[]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("t.toml:1:"), "{got:?}");
        assert!(got[1].starts_with("t.toml:2:"), "{got:?}");
    }

    #[test]
    fn a_file_cut_short_is_one_problem_at_the_cut() {
        let example = include_str!("../../examples/tandem.toml");
        let cut = &example[..example.find("{ shared_buffers").unwrap() + 5];
        let got = problems(cut, &[]);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].contains("unclosed inline table"), "{got:?}");
    }

    #[test]
    fn value_files_are_bounded() {
        let err = read_limited(Path::new("/dev/zero")).unwrap_err();
        assert!(err.contains("longer than 64 KiB"), "{err}");
    }

    /// A small deterministic generator, so a failure names its case.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random and mutated files never panic the reader, and every rejection is one line
    /// per problem, each starting with the file's name, a line and a column inside it.
    /// `TANDEM_FUZZ_CASES` runs more (the CI run keeps to 3 000).
    #[test]
    fn random_and_mutated_files_never_panic_and_every_problem_is_located() {
        let seed_text = include_str!("../../examples/tandem.toml");
        let pieces = [
            "[service.a]",
            "[postgres]",
            "[tandem]",
            "command",
            "=",
            "[",
            "]",
            "{",
            "}",
            "\"",
            "'",
            ",",
            "\n",
            "kind",
            "\"oneshot\"",
            "depends_on",
            "health",
            "restart",
            "\"5s\"",
            "1e999",
            "-1",
            "0x7fffffffffffffff",
            "${",
            "}",
            ":-",
            "\u{0}",
            "é",
            "#",
            ".",
            "[[x]]",
            "true",
            "stop",
            "timeout",
            "= {",
            "\"\\u0000\"",
            "\"\\q\"",
        ];
        let cases: usize = std::env::var("TANDEM_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        let env = HashMap::from([("POSTGRES_PASSWORD".to_string(), "x".to_string())]);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..cases {
            let mut text: Vec<char> = if case % 2 == 0 {
                seed_text.chars().collect()
            } else {
                Vec::new()
            };
            for _ in 0..1 + rng.below(8) {
                let pos = if text.is_empty() {
                    0
                } else {
                    rng.below(text.len() + 1)
                };
                match rng.below(3) {
                    0 if !text.is_empty() => {
                        let end = (pos + rng.below(20)).min(text.len());
                        text.drain(pos.min(end)..end);
                    }
                    _ => {
                        let piece = pieces[rng.below(pieces.len())];
                        for (i, c) in piece.chars().enumerate() {
                            text.insert(pos + i, c);
                        }
                    }
                }
            }
            let text: String = text.into_iter().collect();
            let lines = text.lines().count().max(1) + 1;
            let result = std::panic::catch_unwind(|| problems(&text, &[]));
            let got = match result {
                Ok(p) => p,
                Err(_) => panic!("case {case} panicked on:\n{text}"),
            };
            let _ = &env;
            for line in got {
                let rest = line
                    .strip_prefix("t.toml:")
                    .unwrap_or_else(|| panic!("case {case}: {line:?} names no file"));
                let mut parts = rest.splitn(3, ':');
                let l: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let c: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                assert!(
                    l >= 1 && l <= lines && c >= 1,
                    "case {case}: {line:?} in:\n{text}"
                );
                assert!(!line.contains('\n'), "case {case}: one line per problem");
            }
        }
    }
}
