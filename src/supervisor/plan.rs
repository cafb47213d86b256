//! One way to build the supervisor's services: described by name, validated together
//! (duplicates, unknown dependencies, cycles, conditions that cannot hold), and given their
//! stop ladders and shares of the stop budget. The zero-config mode and the supervisor's
//! own tests both build with it, so the arithmetic under test is the real one.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::{Condition, HealthSpec, Id, Kind, Readiness, RestartSpec, Spec};

/// How a service is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStyle {
    /// PostgreSQL: SIGINT (fast shutdown, clean checkpoint) to the postmaster, then SIGQUIT
    /// (immediate), then SIGKILL to the group, keeping a third of the budget (at least 1 s,
    /// at most half) for its clean stop whatever its dependents do.
    Database,
    /// A program: `signal` to its whole process group, SIGKILL when its share is up.
    Signal(Signal),
}

/// A service as a person describes it.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub name: String,
    pub kind: Kind,
    /// `None`: [`Readiness::Probe`] when it has a probe, else [`Readiness::Started`].
    pub readiness: Option<Readiness>,
    pub depends_on: Vec<(String, Condition)>,
    pub stop: StopStyle,
    pub main: bool,
    pub start_timeout: Option<Duration>,
    pub reload_signal: Option<Signal>,
    pub forward_signals: bool,
    pub health: Option<HealthSpec>,
    pub restart: Option<RestartSpec>,
    pub required: bool,
    /// The first stop signal's time (`None`: what the budget leaves).
    pub stop_timeout: Option<Duration>,
}

impl ServiceDef {
    fn new(name: &str, kind: Kind) -> ServiceDef {
        ServiceDef {
            name: name.to_string(),
            kind,
            readiness: None,
            depends_on: Vec::new(),
            stop: StopStyle::Signal(Signal::SIGTERM),
            main: false,
            start_timeout: None,
            reload_signal: None,
            forward_signals: false,
            health: None,
            restart: None,
            required: true,
            stop_timeout: None,
        }
    }

    pub fn daemon(name: &str) -> ServiceDef {
        ServiceDef::new(name, Kind::Daemon)
    }

    pub fn oneshot(name: &str) -> ServiceDef {
        ServiceDef::new(name, Kind::Oneshot)
    }

    /// Something tandem does not run, known by its probe. It is never restarted: when it
    /// stays unhealthy, that is reported (whatever its health says, see `spec`).
    pub fn external(name: &str, health: HealthSpec) -> ServiceDef {
        ServiceDef {
            readiness: Some(Readiness::Probe),
            health: Some(health),
            ..ServiceDef::new(name, Kind::External)
        }
    }

    /// The embedded PostgreSQL: ready when the runtime says so, stopped as a database,
    /// reloaded with SIGHUP.
    pub fn database(name: &str) -> ServiceDef {
        ServiceDef {
            readiness: Some(Readiness::Reported),
            stop: StopStyle::Database,
            reload_signal: Some(Signal::SIGHUP),
            ..ServiceDef::new(name, Kind::Daemon)
        }
    }

    pub fn after(mut self, dep: &str, cond: Condition) -> ServiceDef {
        self.depends_on.push((dep.to_string(), cond));
        self
    }

    pub fn main(mut self, main: bool) -> ServiceDef {
        self.main = main;
        self
    }

    pub fn stop(mut self, stop: StopStyle) -> ServiceDef {
        self.stop = stop;
        self
    }

    pub fn health(mut self, health: Option<HealthSpec>) -> ServiceDef {
        self.health = health;
        self
    }

    pub fn reload(mut self, signal: Option<Signal>) -> ServiceDef {
        self.reload_signal = signal;
        self
    }

    pub fn forward_signals(mut self, on: bool) -> ServiceDef {
        self.forward_signals = on;
        self
    }

    pub fn restart(mut self, r: Option<RestartSpec>) -> ServiceDef {
        self.restart = r;
        self
    }

    pub fn required(mut self, required: bool) -> ServiceDef {
        self.required = required;
        self
    }

    pub fn stop_timeout(mut self, t: Option<Duration>) -> ServiceDef {
        self.stop_timeout = t;
        self
    }

    pub fn start_timeout(mut self, t: Option<Duration>) -> ServiceDef {
        self.start_timeout = t;
        self
    }
}

/// Collects [`ServiceDef`]s and turns them into [`Spec`]s, in the order added.
#[derive(Debug)]
pub struct Builder {
    budget: Duration,
    defs: Vec<ServiceDef>,
}

impl Builder {
    pub fn new(budget: Duration) -> Builder {
        Builder {
            budget,
            defs: Vec::new(),
        }
    }

    pub fn add(&mut self, def: ServiceDef) -> &mut Builder {
        self.defs.push(def);
        self
    }

    /// The id `name` will have.
    pub fn id(&self, name: &str) -> Option<Id> {
        self.defs.iter().position(|d| d.name == name)
    }

    /// Every problem at once, each one line, or the specs.
    pub fn build(self) -> Result<Vec<Spec>, Vec<String>> {
        let mut errors = Vec::new();
        for (i, d) in self.defs.iter().enumerate() {
            if self.defs[..i].iter().any(|e| e.name == d.name) {
                errors.push(format!("service {:?} is defined twice", d.name));
            }
            if d.kind == Kind::External && d.health.is_none() {
                errors.push(format!(
                    "service {:?} is external (tandem does not run it) and needs a probe to know when it is up",
                    d.name
                ));
            }
        }
        let mut deps: Vec<Vec<(Id, Condition)>> = Vec::new();
        for d in &self.defs {
            let mut mine = Vec::new();
            for (dep, cond) in &d.depends_on {
                match self.id(dep) {
                    None => errors.push(format!(
                        "service {:?} depends on {dep:?}, which is not defined",
                        d.name
                    )),
                    Some(j) if *cond == Condition::Completed && self.defs[j].kind != Kind::Oneshot => {
                        errors.push(format!(
                            "service {:?} waits for {dep:?} to complete, but {dep:?} is not a oneshot and never completes; wait for healthy or started",
                            d.name
                        ))
                    }
                    Some(j) => mine.push((j, *cond)),
                }
            }
            deps.push(mine);
        }
        if let Some(cycle) = find_cycle(&deps) {
            let names: Vec<&str> = cycle.iter().map(|&i| self.defs[i].name.as_str()).collect();
            errors.push(format!("dependency cycle: {}", names.join(" -> ")));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let budget = self.budget;
        Ok(self
            .defs
            .into_iter()
            .zip(deps)
            .map(|(d, depends_on)| spec(d, depends_on, budget))
            .collect())
    }
}

fn spec(d: ServiceDef, depends_on: Vec<(Id, Condition)>, budget: Duration) -> Spec {
    let readiness = d.readiness.unwrap_or(if d.health.is_some() {
        Readiness::Probe
    } else {
        Readiness::Started
    });
    let (stop_ladder, step_timeout, stop_reserve, leader_only) = match d.stop {
        StopStyle::Database => {
            let reserve = database_reserve(budget);
            (
                vec![Signal::SIGINT, Signal::SIGQUIT, Signal::SIGKILL],
                (reserve / 4).min(Duration::from_secs(1)),
                reserve,
                true,
            )
        }
        // A service with a stop timeout of its own keeps that much of the budget for its
        // stop after its dependents are gone; one without takes what the budget leaves.
        StopStyle::Signal(signal) => (
            vec![signal, Signal::SIGKILL],
            Duration::ZERO,
            d.stop_timeout.unwrap_or(Duration::ZERO),
            false,
        ),
    };
    Spec {
        name: d.name,
        kind: d.kind,
        readiness,
        depends_on,
        stop_ladder,
        stop_timeout: d.stop_timeout.unwrap_or(budget),
        step_timeout,
        stop_reserve,
        immediate_step: 1,
        signal_leader_only: leader_only,
        main: d.main,
        start_timeout: d.start_timeout,
        reload_signal: d.reload_signal,
        forward_signals: d.forward_signals,
        // Nothing to restart in a service tandem does not run.
        health: d.health.map(|h| match d.kind {
            Kind::External => HealthSpec {
                on_unhealthy: super::OnUnhealthy::Report,
                ..h
            },
            _ => h,
        }),
        restart: d.restart,
        required: d.required,
    }
}

/// What the database keeps of the budget for its clean stop, whatever its dependents do:
/// a third, at least 1 s, at most half.
pub fn database_reserve(budget: Duration) -> Duration {
    (budget / 3).max(Duration::from_secs(1)).min(budget / 2)
}

/// The end of the budget kept for the last SIGKILL to land and be reaped: a tenth, at
/// most 0.5 s.
pub fn final_grace(budget: Duration) -> Duration {
    (budget / 10).min(Duration::from_millis(500))
}

/// A cycle in the dependency graph, as the path around it (first name repeated at the end).
fn find_cycle(deps: &[Vec<(Id, Condition)>]) -> Option<Vec<Id>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        i: Id,
        deps: &[Vec<(Id, Condition)>],
        marks: &mut [Mark],
        path: &mut Vec<Id>,
    ) -> Option<Vec<Id>> {
        marks[i] = Mark::OnPath;
        path.push(i);
        for &(j, _) in &deps[i] {
            match marks[j] {
                Mark::OnPath => {
                    let start = path.iter().position(|&p| p == j).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(j);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(j, deps, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; deps.len()];
    for i in 0..deps.len() {
        if marks[i] == Mark::New {
            if let Some(c) = visit(i, deps, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_keeps_a_third_of_the_budget_within_bounds() {
        let reserve = |secs: f64| {
            let mut b = Builder::new(Duration::from_secs_f64(secs));
            b.add(ServiceDef::database("postgres"));
            b.build().unwrap()[0].stop_reserve
        };
        assert_eq!(reserve(9.0), Duration::from_secs(3));
        assert_eq!(reserve(3.0), Duration::from_secs(1));
        assert_eq!(reserve(1.0), Duration::from_millis(500));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut b = Builder::new(Duration::from_secs(9));
        b.add(ServiceDef::daemon("a").after("b", Condition::Healthy))
            .add(ServiceDef::daemon("b").after("c", Condition::Started))
            .add(ServiceDef::daemon("c").after("a", Condition::Healthy))
            .add(ServiceDef::daemon("d").after("nope", Condition::Healthy))
            .add(ServiceDef::daemon("e").after("a", Condition::Completed))
            .add(ServiceDef::daemon("a"));
        let errors = b.build().unwrap_err();
        assert_eq!(
            errors,
            [
                "service \"a\" is defined twice",
                "service \"d\" depends on \"nope\", which is not defined",
                "service \"e\" waits for \"a\" to complete, but \"a\" is not a oneshot and never completes; wait for healthy or started",
                "dependency cycle: a -> b -> c -> a",
            ]
        );
    }

    #[test]
    fn readiness_follows_the_probe_unless_set() {
        let h = HealthSpec {
            probe_kind: "http",
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 1,
            start_period: Duration::ZERO,
            on_unhealthy: super::super::OnUnhealthy::Report,
        };
        let mut b = Builder::new(Duration::from_secs(9));
        b.add(ServiceDef::daemon("plain"))
            .add(ServiceDef::daemon("probed").health(Some(h.clone())))
            .add(ServiceDef::database("db").health(Some(h.clone())))
            .add(ServiceDef::external("redis", h));
        let specs = b.build().unwrap();
        let r: Vec<Readiness> = specs.iter().map(|s| s.readiness).collect();
        assert_eq!(
            r,
            [
                Readiness::Started,
                Readiness::Probe,
                Readiness::Reported,
                Readiness::Probe
            ]
        );
    }
}
