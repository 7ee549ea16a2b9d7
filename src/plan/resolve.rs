//! Resolving one runbook step for a mode: the host it runs on (allowed by the site rules), its
//! commands rendered, and what executing it means ([`Action`]); one function per kind of step.

use crate::diagnostic::{Diagnostic, Location};
use crate::duration::Duration;
use crate::fields::{ADDRESS_HINT, Sp, address_problem, url_problem};
use crate::inventory::{Inventory, Service, SiteRole, Vm};
use crate::model::Model;
use crate::plan::scope::{StepScope, render, render_plain};
use crate::plan::vm::{
    define_use, images_dir_of, undo_action, vm_action_checked, vm_action_command,
};
use crate::plan::{
    Action, Instance, PlanOptions, PlannedStep, Production, ReplicaRole, ReplicaUse, Replicated,
    SnapshotHooks, Tls,
};
use crate::runbook::{Mode, Probe, ReplicaSource, Side, Step, StepKind};
use crate::template::{Command, Template};

const DEFAULT_EXEC_TIMEOUT: Duration = Duration(300);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration(600);
const DEFAULT_VM_TIMEOUT: Duration = Duration(600);
const DEFAULT_REPLICATE_TIMEOUT: Duration = Duration(7200);
const DEFAULT_MANUAL_EXPECTED: Duration = Duration(900);

/// A planned step's kind-specific part, as one kind of step resolves it; the rest of a planned
/// step (id, service, phase, estimates) is the same for every kind.
struct Resolved {
    /// The host the step runs on (none for manual steps and tcp or http checks).
    host: Option<String>,
    timeout: Option<Duration>,
    /// The command as the plan shows it.
    command: String,
    verify: Option<String>,
    undo: Option<String>,
    action: Action,
    /// A vm step's driver action.
    action_name: Option<String>,
    replica: Option<ReplicaUse>,
    state_before: Option<Command>,
    undo_stops: bool,
    vm: Option<String>,
    retries: u32,
    idempotent: bool,
}

impl Resolved {
    fn new(
        host: Option<String>,
        timeout: Option<Duration>,
        command: String,
        action: Action,
    ) -> Self {
        Resolved {
            host,
            timeout,
            command,
            verify: None,
            undo: None,
            action,
            action_name: None,
            replica: None,
            state_before: None,
            undo_stops: false,
            vm: None,
            retries: 0,
            idempotent: false,
        }
    }
}

/// One runbook step of one service being resolved for the plan's mode.
struct StepAt<'a> {
    model: &'a Model,
    opts: &'a PlanOptions,
    service: &'a Service,
    step: &'a Step,
    /// `service/step`.
    id: String,
}

/// Resolves one runbook step into a planned step: host, rendered commands, site rules.
pub(super) fn resolve(
    model: &Model,
    opts: &PlanOptions,
    service: &Service,
    step: &Step,
    after_idx: Vec<usize>,
    planned: &[PlannedStep],
    diags: &mut Vec<Diagnostic>,
) -> Option<PlannedStep> {
    let at = StepAt {
        model,
        opts,
        service,
        step,
        id: format!("{}/{}", service.id, step.id.value),
    };
    let errors_before = diags.len();
    let resolved = match &step.kind {
        StepKind::Exec {
            host,
            run,
            verify,
            undo,
            retries,
            idempotent,
        } => at.exec(host, run, verify, undo, diags).map(|r| Resolved {
            retries: *retries,
            idempotent: *idempotent,
            ..r
        }),
        StepKind::Check {
            host,
            vm,
            probe,
            interval,
        } => at.check(host, vm.as_ref(), probe, *interval, diags),
        StepKind::Manual { instructions } => Some(Resolved::new(
            None,
            step.timeout,
            instructions.clone(),
            Action::Manual {
                instructions: instructions.clone(),
            },
        )),
        StepKind::Vm {
            action,
            vm,
            side,
            undo,
        } => at.vm(action, vm, side, undo, diags),
        StepKind::Replicate { source } => at.replicate(source, diags),
    }?;
    // A step whose commands did not all render is not planned.
    if diags.len() > errors_before {
        return None;
    }
    let inv = &model.inventory;
    let host = resolved.host.as_deref().and_then(|h| inv.hosts.get(h));
    let expected = step
        .expected
        .or(resolved.timeout)
        .unwrap_or(DEFAULT_MANUAL_EXPECTED);
    Some(PlannedStep {
        id: at.id,
        service: service.id.clone(),
        step: step.id.value.clone(),
        host: resolved.host.clone(),
        target: host.map(|h| format!("{}@{}:{}", h.user, h.address, h.port)),
        site: host.and_then(|h| h.site.as_ref().map(|s| s.value.clone())),
        kind: step.kind.name(),
        action: resolved.action_name,
        replica: resolved.replica,
        state_before: resolved.state_before,
        undo_stops: resolved.undo_stops,
        vm: resolved.vm,
        command: resolved.command,
        verify: resolved.verify,
        undo: resolved.undo,
        description: step.description.clone(),
        timeout_s: resolved.timeout.map(Duration::secs),
        expected_s: expected.secs(),
        retries: resolved.retries,
        idempotent: resolved.idempotent,
        needs_primary: step.needs_primary,
        phase: step.phase,
        after: after_idx
            .into_iter()
            .map(|i| planned[i].id.clone())
            .collect(),
        est_start_s: 0,
        est_finish_s: 0,
        critical: false,
        action_spec: resolved.action,
    })
}

impl<'a> StepAt<'a> {
    fn inv(&self) -> &'a Inventory {
        &self.model.inventory
    }

    fn mode(&self) -> Mode {
        self.opts.mode
    }

    /// The template values of the step before its kind says on which host and vm side it runs.
    fn scope(&self) -> StepScope<'a> {
        let inv = self.inv();
        StepScope {
            inv,
            host: None,
            service: self.service,
            vm: self
                .service
                .vm()
                .and_then(|v| inv.vms.get(v))
                .map(|v| (v, self.mode().default_side())),
            run_id: &self.opts.run_id,
            mode: self.mode(),
        }
    }

    /// The site rules for `host`: a forbidden host is reported (at `loc`) before any template
    /// of the step is rendered. `None` when reported.
    fn site_allows(&self, host: &str, loc: &Location, diags: &mut Vec<Diagnostic>) -> Option<()> {
        let (inv, mode, needs_primary) = (self.inv(), self.mode(), self.step.needs_primary);
        match site_violation(inv, mode, needs_primary, &self.id, host, loc) {
            Some(d) => {
                diags.push(d);
                None
            }
            None => Some(()),
        }
    }

    /// The host a step of one host runs on (its own `host`, else its service's), allowed by
    /// the site rules; `what` names the step in the error when there is none.
    fn runs_on(
        &self,
        host: &Option<Sp<String>>,
        what: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<String>> {
        let service = self.service;
        let own = || {
            service
                .host()
                .map(|h| Sp::new(h.to_string(), service.loc.clone()))
        };
        let Some(h) = host.clone().or_else(own) else {
            diags.push(
                Diagnostic::error(format!("step `{}` ({what}) has no host", self.id))
                    .at(self.step.id.loc.clone())
                    .hint(format!(
                        "add `host = \"...\"` to the step, or `host = \"...\"` to service `{}`",
                        service.id
                    )),
            );
            return None;
        };
        self.site_allows(&h.value, &h.loc, diags)?;
        Some(h)
    }

    fn exec(
        &self,
        host: &Option<Sp<String>>,
        run: &Template,
        verify: &Option<Template>,
        undo: &Option<Template>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Resolved> {
        let timeout = Some(self.step.timeout.unwrap_or(DEFAULT_EXEC_TIMEOUT));
        let h = self.runs_on(host, "exec", diags)?;
        let mut scope = self.scope();
        scope.host = self.inv().hosts.get(&h.value);
        let run = render(run, &scope, diags);
        let verify = verify.as_ref().and_then(|t| render(t, &scope, diags));
        let undo = undo.as_ref().and_then(|t| render(t, &scope, diags));
        let run = run?;
        Some(Resolved {
            verify: verify.as_ref().map(ToString::to_string),
            undo: undo.as_ref().map(ToString::to_string),
            ..Resolved::new(
                Some(h.value),
                timeout,
                run.to_string(),
                Action::Exec { run, verify, undo },
            )
        })
    }

    fn check(
        &self,
        host: &Option<Sp<String>>,
        vm: Option<&Sp<String>>,
        probe: &Probe,
        interval: Duration,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Resolved> {
        let timeout = Some(self.step.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT));
        match probe {
            Probe::Command { run } => {
                let h = self.runs_on(host, "command check", diags)?;
                let mut scope = self.scope();
                scope.host = self.inv().hosts.get(&h.value);
                let run = render(run, &scope, diags)?;
                Some(Resolved::new(
                    Some(h.value),
                    timeout,
                    run.to_string(),
                    Action::Probe { run, interval },
                ))
            }
            Probe::Tcp {
                address,
                port,
                expect,
            } => {
                let mut scope = self.scope();
                let (inv, service, mode) = (self.inv(), self.service, self.mode());
                self.target_site_allows(host, diags)?;
                let target =
                    probe_target(inv, service, host, vm, mode, &mut scope, &self.id, diags)?;
                let address = self.tcp_address(address.as_ref(), target, &scope, diags)?;
                let instance = self.instance(host, vm, diags)?;
                let production = self.not_production(instance.as_ref(), &address, diags)?;
                let expect = self.expect(expect.as_ref(), &scope, instance.as_ref(), diags)?;
                Some(Resolved::new(
                    None,
                    timeout,
                    format!(
                        "tcp {address}:{port}{} (every {interval}){}",
                        expected_text(expect.as_deref(), "banner"),
                        proves(instance.as_ref())
                    ),
                    Action::Tcp {
                        address,
                        port: *port,
                        interval,
                        instance,
                        expect,
                        production,
                    },
                ))
            }
            Probe::Http {
                url: url_template,
                status,
                ca_file,
                insecure,
                expect,
            } => {
                let mut scope = self.scope();
                let (inv, service, mode) = (self.inv(), self.service, self.mode());
                self.target_site_allows(host, diags)?;
                probe_target(inv, service, host, vm, mode, &mut scope, &self.id, diags)?;
                let url = render_plain(url_template, &scope, diags)?;
                let https = self.http_url(&url, url_template, diags)?;
                let tls = self.http_tls(https, &url, ca_file.as_ref(), *insecure, diags)?;
                let scheme = if https { "https" } else { "http" };
                let trust = match (&tls.ca_file, tls.insecure) {
                    _ if !https => String::new(),
                    (_, true) => ", certificate NOT verified".to_string(),
                    (Some(ca), false) => format!(", certificate checked against {ca}"),
                    (None, false) => {
                        ", certificate checked against the system's authorities".to_string()
                    }
                };
                let instance = self.instance(host, vm, diags)?;
                let production = self.not_production(instance.as_ref(), url_host(&url), diags)?;
                let expect = self.expect(expect.as_ref(), &scope, instance.as_ref(), diags)?;
                Some(Resolved::new(
                    None,
                    timeout,
                    format!(
                        "{scheme} GET {url} expect {status}{} (every {interval}{trust}){}",
                        expected_text(expect.as_deref(), "body"),
                        proves(instance.as_ref())
                    ),
                    Action::Http {
                        url,
                        status: *status,
                        interval,
                        tls,
                        instance,
                        expect,
                        production,
                    },
                ))
            }
        }
    }

    /// The vm a tcp or http check checks (its `vm`, else, without a `host`, its service's)
    /// and how its answer is proved to be that vm's (see [`Instance`]). `Some(None)`: it
    /// checks a host, or a service on no vm. `None` when reported: its driver cannot say
    /// whether the vm runs, so no check of it could prove anything.
    fn instance(
        &self,
        host: &Option<Sp<String>>,
        vm: Option<&Sp<String>>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Option<Instance>> {
        let (model, inv, mode) = (self.model, self.inv(), self.mode());
        let vm_id = match (host, vm) {
            (_, Some(v)) => v.value.as_str(),
            (Some(_), None) => return Some(None),
            (None, None) => match self.service.vm() {
                Some(v) => v,
                None => return Some(None),
            },
        };
        let Some(vm) = inv.vms.get(vm_id) else {
            return Some(None);
        };
        let side = mode.default_side();
        let (action, shown) = match mode {
            Mode::Drill => ("drill-status", format!("the drill copy of vm {}", vm.id)),
            _ => ("status", format!("vm {}", vm.id)),
        };
        let run_id = &self.opts.run_id;
        let Some((host, status)) = vm_action_command(model, self.service, vm, side, action, run_id)
        else {
            let driver = &vm.driver.value;
            let has = inv
                .drivers
                .get(driver)
                .is_some_and(|d| d.actions.contains_key(action));
            let why = if has {
                format!("the `{action}` action of driver `{driver}` does not render for it")
            } else {
                format!("driver `{driver}` has no `{action}` action to say whether it runs")
            };
            let mut d = Diagnostic::error(format!(
                "check `{}` cannot prove that {shown} answers: {why}",
                self.id
            ))
            .at(self.step.id.loc.clone());
            if let Some(defined) = inv.drivers.get(driver) {
                d = d.note(
                    format!("driver `{driver}` is defined here"),
                    defined.loc.clone(),
                );
            }
            diags.push(d.hint(format!(
                "add `{action} = \"...\"` under [drivers.{driver}]: it prints `running` when the vm runs, `shut off` when it does not"
            )));
            return None;
        };
        let other = match side {
            Side::Primary => Side::Recovery,
            Side::Recovery => Side::Primary,
        };
        let left = matches!(mode, Mode::Failover | Mode::Failback | Mode::Restore)
            .then(|| vm_action_command(model, self.service, vm, other, "status", run_id))
            .flatten();
        Some(Some(Instance {
            vm: vm.id.clone(),
            shown,
            host,
            status,
            left,
        }))
    }

    /// A drill's tcp or http check aimed at a host (`host = ...`) never probes the primary
    /// site (production would answer). `None` when reported. Other modes' checks may probe
    /// any site (a restore's check of the recovery site's directory, say).
    fn target_site_allows(
        &self,
        host: &Option<Sp<String>>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<()> {
        match host {
            Some(h) if self.mode() == Mode::Drill => self.site_allows(&h.value, &h.loc, diags),
            _ => Some(()),
        }
    }

    /// A drill's check must not probe a production address: production answers there, not
    /// the drill's copy, and the check would pass for it. The production addresses are its
    /// vm's own, those of the vms a drill copies (their primary hosts on the primary site)
    /// and those of the primary site's hosts. The run compares them again as they resolve.
    /// `None` when reported; the addresses otherwise (none outside a drill).
    fn not_production(
        &self,
        instance: Option<&Instance>,
        probed: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Vec<Production>> {
        if self.mode() != Mode::Drill {
            return Some(Vec::new());
        }
        let production = production_addresses(self.inv(), instance.map(|i| i.vm.as_str()));
        let Some(hit) = production.iter().find(|p| same_address(&p.address, probed)) else {
            return Some(production);
        };
        let hint = match instance.and_then(|i| self.inv().vms.get(&i.vm)) {
            Some(vm) if vm.recovery_address.is_some() => format!(
                "probe the drill copy of vm {} at its `recovery_address`, {} (the check's default), or check it from the recovery host (`probe = \"command\"`, `host = \"{}\"`)",
                vm.id,
                vm.recovery_address.as_deref().unwrap_or_default(),
                vm.recovery.value
            ),
            Some(vm) => format!(
                "give vm {} a `recovery_address` its drill copy answers on, or check the copy from the recovery host (`probe = \"command\"`, `host = \"{}\"`)",
                vm.id, vm.recovery.value
            ),
            None => "probe the drill's copy at its recovery address, or check it from a recovery-site host (`probe = \"command\"`)".to_string(),
        };
        diags.push(
            Diagnostic::error(format!(
                "drill check `{}` probes {probed}, {}: production answers there, not the drill's copy, so the check would pass for it",
                self.id, hit.what
            ))
            .at(self.step.id.loc.clone())
            .hint(hint),
        );
        None
    }

    /// A check's `expect`, rendered with the values of what it targets (the host of its vm:
    /// where the run brings it up). `Some(None)` without one; `None` when reported.
    fn expect(
        &self,
        expect: Option<&Template>,
        scope: &StepScope<'a>,
        instance: Option<&Instance>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Option<String>> {
        let Some(t) = expect else {
            return Some(None);
        };
        let mut scope = scope.clone();
        if let Some(i) = instance {
            scope.host = self.inv().hosts.get(&i.host);
        }
        let text = render_plain(t, &scope, diags)?;
        if text.trim().is_empty() {
            diags.push(
                Diagnostic::error(format!(
                    "check `{}`: `expect` is empty, so any answer would contain it",
                    self.id
                ))
                .at(t.source.loc.clone())
                .hint("write text only the right server sends, e.g. expect = \"{{ vm.name }}\""),
            );
            return None;
        }
        Some(Some(text))
    }

    /// The address a tcp check connects to: its own `address`, else its target's.
    fn tcp_address(
        &self,
        address: Option<&Template>,
        target: Option<String>,
        scope: &StepScope<'_>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<String> {
        let id = &self.id;
        match address {
            Some(t) => {
                let a = render_plain(t, scope, diags)?;
                if let Some(problem) = address_problem(&a) {
                    diags.push(
                        Diagnostic::error(format!("the address of tcp check `{id}` {problem}"))
                            .at(t.source.loc.clone())
                            .hint(ADDRESS_HINT),
                    );
                    return None;
                }
                Some(a)
            }
            None => match target {
                Some(a) => Some(a),
                None => {
                    diags.push(
                        Diagnostic::error(format!("tcp check `{id}` has no address"))
                            .at(self.step.id.loc.clone())
                            .hint("add `address = \"...\"`, `host = \"...\"` or `vm = \"...\"`, or give the service a vm or host with an address"),
                    );
                    None
                }
            },
        }
    }

    /// Checks an http check's rendered `url`; whether it is https.
    fn http_url(
        &self,
        url: &str,
        url_template: &Template,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<bool> {
        let id = &self.id;
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            diags.push(
                Diagnostic::error(format!(
                    "http check `{id}`: `{url}` is not an http:// or https:// address"
                ))
                .at(url_template.source.loc.clone())
                .hint("use a command check (`probe = \"command\"`) for other protocols"),
            );
            return None;
        }
        if let Some(problem) = url_problem(url) {
            diags.push(
                Diagnostic::error(format!("the url of http check `{id}` {problem}"))
                    .at(url_template.source.loc.clone())
                    .hint("write `http://HOST[:PORT]/PATH` or `https://...`, HOST an IP address or a host name"),
            );
            return None;
        }
        Some(https)
    }

    /// How an http check trusts its server: `ca_file` and `insecure` are for https only.
    fn http_tls(
        &self,
        https: bool,
        url: &str,
        ca_file: Option<&Sp<String>>,
        insecure: bool,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Tls> {
        if https {
            return Some(Tls {
                ca_file: ca_file.map(|c| c.value.clone()),
                insecure,
            });
        }
        if let Some(loc) = ca_file
            .map(|c| c.loc.clone())
            .or_else(|| insecure.then(|| self.step.id.loc.clone()))
        {
            diags.push(
                Diagnostic::error(format!(
                    "http check `{}`: `ca_file` and `insecure` are for https, and `{url}` is plain http",
                    self.id
                ))
                .at(loc)
                .hint("use an https:// address, or remove them"),
            );
            return None;
        }
        Some(Tls::default())
    }

    fn vm(
        &self,
        action: &str,
        vm: &Option<Sp<String>>,
        side: &Option<Sp<Side>>,
        custom_undo: &Option<Template>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Resolved> {
        let (inv, mode) = (self.inv(), self.mode());
        let (service, step, id) = (self.service, self.step, &self.id);
        let timeout = Some(step.timeout.unwrap_or(DEFAULT_VM_TIMEOUT));
        let vm_id = match vm {
            Some(v) => v.clone(),
            None => match service.vm() {
                Some(v) => Sp::new(v.to_string(), step.id.loc.clone()),
                None => {
                    diags.push(
                        Diagnostic::error(format!("vm step `{id}` names no vm"))
                            .at(step.id.loc.clone())
                            .hint(format!(
                                "add `vm = \"...\"`: service `{}` lives on no vm",
                                service.id
                            )),
                    );
                    return None;
                }
            },
        };
        let vm = inv.vms.get(&vm_id.value)?;
        let side_v = side
            .as_ref()
            .map(|s| s.value)
            .unwrap_or(mode.default_side());
        let h = match side_v {
            Side::Primary => &vm.primary,
            Side::Recovery => &vm.recovery,
        };
        let host_loc = side
            .as_ref()
            .map(|s| s.loc.clone())
            .unwrap_or_else(|| step.id.loc.clone());
        self.site_allows(&h.value, &host_loc, diags)?;
        if mode == Mode::Drill && !DRILL_VM_ACTIONS.contains(&action) {
            diags.push(
                Diagnostic::error(format!(
                    "step `{id}`: a drill must not `{action}` vm `{}` itself: that acts on the real vm on {} (its own name, disks, MAC addresses and networks), not on a throw-away copy",
                    vm.id, h.value
                ))
                .at(step.id.loc.clone())
                .hint(format!(
                    "a drill boots its copy with `action = \"drill-start\"` and removes it with `drill-stop` (cleanup); its other vm actions only read: {}",
                    DRILL_VM_ACTIONS.join(", ")
                )),
            );
            return None;
        }
        let mut scope = self.scope();
        scope.host = inv.hosts.get(&h.value);
        scope.vm = Some((vm, side_v));
        let replica = self.replica_use(vm, side_v, action);
        let driver = inv.drivers.get(&vm.driver.value)?;
        let Some(tpl) = driver.actions.get(action) else {
            diags.push(
                Diagnostic::error(format!("driver `{}` has no `{action}` action", driver.id))
                    .at(step.id.loc.clone())
                    .note(
                        format!("driver `{}` is defined here", driver.id),
                        driver.loc.clone(),
                    )
                    .hint(format!(
                        "add `{action} = \"...\"` under [drivers.{}]",
                        driver.id
                    )),
            );
            return None;
        };
        let parse = |tpl: &Sp<String>, diags: &mut Vec<Diagnostic>| match Template::parse(
            tpl,
            self.model.sources.map.text(tpl.loc.file),
        ) {
            Ok(t) => Some(t),
            Err(d) => {
                diags.push(*d);
                None
            }
        };
        let tpl = parse(tpl, diags)?;
        let run = render(&tpl, &scope, diags)?;
        // What puts the vm back as it was when a planned failover or failback rolls back:
        // the opposite action of the same driver, on the same host (the other modes never
        // roll back).
        // A runbook's own `undo` replaces it.
        let rolls_back = matches!(mode, Mode::Failover | Mode::Failback);
        let undo = match custom_undo {
            Some(t) => render(t, &scope, diags),
            None => rolls_back
                .then(|| undo_action(action))
                .flatten()
                .and_then(|a| driver.actions.get(a))
                .and_then(|t| parse(t, diags))
                .and_then(|t| render(&t, &scope, diags)),
        };
        // Undoing a start stops the vm: only if it was not running before the step. Asked
        // whatever undoes it (or nothing does): a failover's start of a vm that already runs
        // there is refused on that answer (see the runner's step).
        let mut state_before = None;
        if rolls_back && action == "start" {
            state_before = driver
                .actions
                .get("status")
                .and_then(|t| parse(t, diags))
                .and_then(|t| render(&t, &scope, diags));
        }
        Some(Resolved {
            undo: undo.as_ref().map(ToString::to_string),
            action_name: Some(action.to_string()),
            replica,
            state_before,
            undo_stops: rolls_back && custom_undo.is_none() && action == "start" && undo.is_some(),
            vm: Some(vm.id.clone()),
            ..Resolved::new(
                Some(h.value.clone()),
                timeout,
                run.to_string(),
                Action::Exec {
                    run,
                    verify: None,
                    undo,
                },
            )
        })
    }

    /// The replica a vm step uses, when it starts or stops a copy: where its disks are, and
    /// how the copy is checked and defined.
    fn replica_use(&self, vm: &Vm, side: Side, action: &str) -> Option<ReplicaUse> {
        let (model, service, run_id) = (self.model, self.service, &self.opts.run_id);
        let role = match (side, action) {
            (Side::Recovery, "drill-start") => ReplicaRole::DrillStart,
            (Side::Recovery, "drill-stop") => ReplicaRole::DrillStop,
            (Side::Recovery, "start") => ReplicaRole::Start,
            (Side::Primary, "start") if self.mode() == Mode::Failback => ReplicaRole::FailedBack,
            _ => return None,
        };
        let recovery = &vm.recovery.value;
        let snapshot_check = (role == ReplicaRole::DrillStart)
            .then(|| {
                vm_action_command(model, service, vm, Side::Primary, "replicate-check", run_id)
            })
            .flatten();
        let define = define_use(model, service, vm, role, run_id);
        // What a start from the copies takes as their points' source.
        let primary = &vm.primary.value;
        let sources = match (role, images_dir_of(self.inv(), primary)) {
            (ReplicaRole::DrillStart | ReplicaRole::Start, Some(src)) => vm
                .disks
                .iter()
                .map(|d| format!("{primary}:{src}/{d}"))
                .collect(),
            _ => Vec::new(),
        };
        images_dir_of(self.inv(), recovery).map(|dir| ReplicaUse {
            vm: vm.id.clone(),
            host: recovery.clone(),
            paths: vm.disks.iter().map(|d| format!("{dir}/{d}")).collect(),
            sources,
            role,
            snapshot_check,
            define,
        })
    }

    fn replicate(&self, source: &ReplicaSource, diags: &mut Vec<Diagnostic>) -> Option<Resolved> {
        let timeout = Some(self.step.timeout.unwrap_or(DEFAULT_REPLICATE_TIMEOUT));
        let reverse = self.mode() == Mode::Failback;
        let t = match source {
            ReplicaSource::Vm(v) => self.vm_transfer(self.inv().vms.get(&v.value)?, diags)?,
            ReplicaSource::Backup(b) => {
                let set = self.inv().backups.get(&b.value)?;
                let (from, to) = self.direction(&set.source_host.value, &set.dest_host.value);
                let (src, dst) = self.direction(&set.source_path, &set.dest_path);
                Transfer {
                    what: Replicated::Backup(set.id.clone()),
                    from,
                    to,
                    items: vec![(src, dst)],
                    retention: set.retention,
                    snapshot: None,
                    capture: None,
                    guest: None,
                }
            }
        };
        // Both ends are checked, and both reported.
        let loc = &self.step.id.loc;
        let from_allowed = self.site_allows(&t.from, loc, diags);
        let to_allowed = self.site_allows(&t.to, loc, diags);
        from_allowed.and(to_allowed)?;
        let (noun, name) = match &t.what {
            Replicated::Vm(v) => ("vm", v),
            Replicated::Backup(b) => ("backup", b),
        };
        let paths: Vec<String> = t
            .items
            .iter()
            .map(|(a, b)| format!("{}:{a} → {}:{b}", t.from, t.to))
            .collect();
        let command = format!(
            "replicate {noun} {name}{}: {}",
            if reverse { " (reverse direction)" } else { "" },
            paths.join(", ")
        );
        Some(Resolved::new(
            Some(t.to.clone()),
            timeout,
            command,
            Action::Replicate {
                what: t.what,
                from_host: t.from,
                to_host: t.to,
                items: t.items,
                retention: t.retention,
                snapshot: t.snapshot,
                capture: t.capture,
                guest: t.guest,
            },
        ))
    }

    /// `(primary, recovery)` in the direction the mode replicates: reversed by a failback.
    fn direction(&self, primary: &str, recovery: &str) -> (String, String) {
        let (a, b) = (primary.to_string(), recovery.to_string());
        if self.mode() == Mode::Failback {
            (b, a)
        } else {
            (a, b)
        }
    }

    /// What replicating a vm's disks copies, between which hosts, with which driver hooks.
    fn vm_transfer(&self, vm: &Vm, diags: &mut Vec<Diagnostic>) -> Option<Transfer> {
        let (model, inv) = (self.model, self.inv());
        let (service, run_id) = (self.service, &self.opts.run_id);
        let reverse = self.mode() == Mode::Failback;
        let (from, to) = self.direction(&vm.primary.value, &vm.recovery.value);
        let no_images_dir = |host: &str| {
            Diagnostic::error(format!(
                "replicate step `{}` needs the variable `images_dir` of host `{host}`",
                self.id
            ))
            .at(self.step.id.loc.clone())
            .hint(format!(
                "add `images_dir = \"/var/lib/libvirt/images\"` under [hosts.{host}.vars]"
            ))
        };
        let (src, dst) = match (images_dir_of(inv, &from), images_dir_of(inv, &to)) {
            (Some(a), Some(b)) => (a, b),
            (a, b) => {
                if a.is_none() {
                    diags.push(no_images_dir(&from));
                }
                if b.is_none() {
                    diags.push(no_images_dir(&to));
                }
                return None;
            }
        };
        let items = vm
            .disks
            .iter()
            .map(|d| (format!("{src}/{d}"), format!("{dst}/{d}")))
            .collect();
        let side = if reverse {
            Side::Recovery
        } else {
            Side::Primary
        };
        // A hook the driver has that does not render for the vm is an error, never no hook:
        // its copy would be read unfrozen (recorded good), or frozen for good.
        // (On the primary, the files' check says it already, as it says a value inside
        // quotes on either side: said here for a failback's hooks on the recovery host.)
        let mut unwritable = Vec::new();
        let mut said = true;
        for name in crate::plan::REPLICATE_HOOKS {
            if let Err(why) = vm_action_checked(model, service, vm, side, name, run_id) {
                said &= why.contains(crate::template::INSIDE_QUOTES);
                unwritable.push(format!("`{name}` ({why})"));
            }
        }
        if !unwritable.is_empty() && (said || !reverse) {
            return None;
        }
        if !unwritable.is_empty() {
            diags.push(
                Diagnostic::error(format!(
                    "replicate step `{}` cannot run the hooks of vm `{}`'s driver `{}` on host `{}`: {}",
                    self.id,
                    vm.id,
                    vm.driver.value,
                    from,
                    unwritable.join(", ")
                ))
                .at(self.step.id.loc.clone())
                .hint("give the host the variables the hooks name (or the values they need)"),
            );
            return None;
        }
        let action = |name: &str| vm_action_command(model, service, vm, side, name, run_id);
        let capture = inv
            .drivers
            .get(&vm.driver.value)
            .filter(|d| d.defines())
            .and_then(|d| {
                let format = d.definition_format?;
                action("definition").map(|(_, c)| (c, format))
            });
        let snapshot = match (action("replicate-check"), action("replicate-end")) {
            (Some((host, check)), Some((_, end))) => Some(SnapshotHooks {
                host,
                check,
                end,
                begin: action("replicate-begin").map(|(_, c)| c),
                live: inv
                    .drivers
                    .get(&vm.driver.value)
                    .is_some_and(|d| d.reads_live),
            }),
            _ => None,
        };
        let guest = (vm.changed_blocks && vm.driver.value == "libvirt").then_some(reverse);
        Some(Transfer {
            what: Replicated::Vm(vm.id.clone()),
            from,
            to,
            items,
            retention: vm.retention,
            snapshot,
            capture,
            guest,
        })
    }
}

/// What a replicate step copies, from which host to which.
struct Transfer {
    what: Replicated,
    from: String,
    to: String,
    /// (source path, destination path) pairs.
    items: Vec<(String, String)>,
    retention: u32,
    snapshot: Option<SnapshotHooks>,
    capture: Option<(Command, crate::vmdef::Format)>,
    guest: Option<bool>,
}

/// The vm actions a drill may take: its copy's own, and those that only read.
const DRILL_VM_ACTIONS: &[&str] = &[
    "drill-start",
    "drill-stop",
    "drill-status",
    "drill-network-check",
    "status",
    "replicate-check",
    "definition",
];

/// A step on `host` that the mode forbids: a drill never touches the primary site, a failover
/// step on it must need the primary, a restore never runs on the recovery site.
pub(super) fn site_violation(
    inv: &Inventory,
    mode: Mode,
    needs_primary: bool,
    id: &str,
    host: &str,
    loc: &Location,
) -> Option<Diagnostic> {
    let site = inv.site_of(host)?;
    let role = site.role?;
    let (why, hint) = match (mode, role) {
        (Mode::Drill, SiteRole::Primary) => (
            "a drill must not touch production",
            "run it on a recovery-site host (for vm steps: `on = \"recovery\"`)",
        ),
        (Mode::Failover, SiteRole::Primary) if !needs_primary => (
            "it would fail when the primary site is lost",
            "mark it `needs_primary = true`, or run it on a host of another site",
        ),
        (Mode::Restore, SiteRole::Recovery) => (
            "a restore brings back the primary site by itself",
            "run it on a host of the primary site",
        ),
        _ => return None,
    };
    Some(
        Diagnostic::error(format!(
            "{mode} step `{id}` uses `{host}` on site `{}` ({}): {why}",
            site.id,
            role.as_str()
        ))
        .at(loc.clone())
        .hint(hint),
    )
}

/// The target of a tcp or http probe (run from the orchestrator): the `host` or `vm` the step
/// names, else the service's own; sets the template scope accordingly. `None` on a reported
/// error; `Some(None)` when there is no default address.
#[allow(clippy::too_many_arguments)]
fn probe_target<'a>(
    inv: &'a Inventory,
    service: &Service,
    host: &Option<crate::fields::Sp<String>>,
    vm: Option<&crate::fields::Sp<String>>,
    mode: Mode,
    scope: &mut StepScope<'a>,
    id: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Option<String>> {
    match (host, vm) {
        (Some(h), Some(_)) => {
            diags.push(
                Diagnostic::error(format!("check `{id}` names both a host and a vm"))
                    .at(h.loc.clone())
                    .hint("a tcp or http check targets one host or one vm"),
            );
            None
        }
        (Some(h), None) => {
            let host = inv.hosts.get(&h.value)?;
            scope.host = Some(host);
            Some(Some(host.address.clone()))
        }
        (None, Some(v)) => {
            let vm = inv.vms.get(&v.value)?;
            let side = mode.default_side();
            scope.vm = Some((vm, side));
            Some(match side {
                Side::Recovery => vm.recovery_address.clone().or(vm.address.clone()),
                Side::Primary => vm.address.clone(),
            })
        }
        (None, None) => Some(default_address(inv, service, mode)),
    }
}

/// The host part of an http(s) url (an IPv6 address without its brackets).
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    host_port.split(':').next().unwrap_or(host_port)
}

/// How the plan says what a check's answer must contain.
fn expected_text(expect: Option<&str>, what: &str) -> String {
    expect
        .map(|e| format!(", {what} containing {e:?}"))
        .unwrap_or_default()
}

/// How the plan says that a check proves which vm answers.
fn proves(instance: Option<&Instance>) -> String {
    let Some(i) = instance else {
        return String::new();
    };
    let action = if i.shown.starts_with("the drill copy") {
        "drill-status"
    } else {
        "status"
    };
    match &i.left {
        Some((left, _)) => format!(
            "; passes only while {} runs on {} and not on {left} (its driver's {action})",
            i.shown, i.host
        ),
        None => format!(
            "; passes only while {} runs on {} (its driver's {action})",
            i.shown, i.host
        ),
    }
}

/// The production addresses a drill's check must not reach (see [`Production`]): `own`
/// vm's production address, those of the vms whose primary host is on the primary site, and
/// those of the primary site's hosts.
fn production_addresses(inv: &Inventory, own: Option<&str>) -> Vec<Production> {
    let primary_site = |host: &str| {
        inv.site_of(host)
            .is_some_and(|s| s.role == Some(SiteRole::Primary))
    };
    let mut out: Vec<Production> = Vec::new();
    let vms = inv
        .vms
        .values()
        .filter(|vm| Some(vm.id.as_str()) == own || primary_site(&vm.primary.value));
    for vm in vms {
        if let Some(address) = &vm.address {
            out.push(Production {
                address: address.clone(),
                what: format!("the production address of vm {}", vm.id),
            });
        }
    }
    for host in inv.hosts.values().filter(|h| primary_site(&h.id)) {
        let site = inv.site_of(&host.id).map_or("", |s| s.id.as_str());
        out.push(Production {
            address: host.address.clone(),
            what: format!("the address of host {} (site {site}, primary)", host.id),
        });
    }
    out
}

/// Whether two addresses, as written, are one: names compare without case or a final dot,
/// an IPv6 address with or without its brackets.
fn same_address(a: &str, b: &str) -> bool {
    let plain = |x: &str| {
        let x = x.trim();
        let x = x
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(x);
        x.strip_suffix('.').unwrap_or(x).to_ascii_lowercase()
    };
    plain(a) == plain(b)
}

/// Where a service answers for the side the mode brings up.
fn default_address(inv: &Inventory, service: &Service, mode: Mode) -> Option<String> {
    if let Some(vm) = service.vm().and_then(|v| inv.vms.get(v)) {
        return match mode.default_side() {
            Side::Recovery => vm.recovery_address.clone().or(vm.address.clone()),
            Side::Primary => vm.address.clone(),
        };
    }
    service
        .host()
        .and_then(|h| inv.hosts.get(h))
        .map(|h| h.address.clone())
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn the_host_of_a_url_is_read_without_its_port_user_or_path() {
        for (url, host) in [
            ("http://erp.pra.example:8080/health", "erp.pra.example"),
            ("https://10.0.0.5/", "10.0.0.5"),
            ("http://u:p@db.example/x?y=1", "db.example"),
            ("http://[fd00::5]:8080/", "fd00::5"),
            ("http://erp.pra.example", "erp.pra.example"),
        ] {
            assert_eq!(url_host(url), host, "{url}");
        }
    }
}
